//! The promise, as code: checked on the disks a run leaves behind.
//!
//! - nothing lost: every photo taken, and every edit of one, is an asset (its current
//!   version), in the library or its Recently Deleted;
//! - nothing duplicated: no content is more assets than files were made with it (a copy
//!   under another name is a photo of its own, never merged);
//! - where people put them: a file renamed or moved by a person ends, as its asset, at
//!   its newest path, and every file on every device sits at its asset's path;
//! - one library: every device shows the same assets, favourites, hidden and deleted
//!   states and albums as the library, and holds exactly its live photos;
//! - the newest favourite wins: an asset's favourite is the one of its newest edit;
//! - intact: every stored chunk verifies, every SQLite database passes `integrity_check`,
//!   and no partial file sits at a final path in a device's folder.

use crate::hosts::{Shared, View};
use crate::{ACCOUNT, EPOCH_MS};
use keepsake_library::{AssetState, Change, Library};
use keepsake_store::{ManualClock, SeededEntropy, Store, StoreConfig};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

/// What the check found.
#[derive(Debug, Default)]
pub struct Report {
    /// Assets in the library (live or in Recently Deleted).
    pub assets: usize,
    /// Every broken promise, in words.
    pub violations: Vec<String>,
}

/// Checks a finished run whose files are under `root`.
pub(crate) fn check(root: &Path, shared: &Shared, devices: usize) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let clock = Arc::new(ManualClock::new(EPOCH_MS));
    let library = Library::open(
        Some(root.join("cloud/library.sqlite")),
        clock.clone(),
        Arc::new(SeededEntropy::new(0)),
        Default::default(),
    )?;
    let mut assets = Vec::new();
    let mut cursor = 0;
    loop {
        let page = library.list_changes(ACCOUNT, cursor, 1000)?;
        for change in page.changes {
            if let Change::Asset(a) = change
                && !matches!(a.state, AssetState::Purged(_))
            {
                assets.push(a);
            }
        }
        cursor = page.cursor;
        if !page.more {
            break;
        }
    }
    report.assets = assets.len();
    let v = &mut report.violations;

    let mut by_content: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for a in &assets {
        by_content
            .entry(a.file_hash.to_hex())
            .or_default()
            .push(&a.asset_id);
    }
    for (hash, device) in &shared.captured {
        if !by_content.contains_key(hash) && !shared.replaced.contains(hash) {
            v.push(format!(
                "lost: photo {} taken on device{device}",
                &hash[..12]
            ));
        }
    }
    for (hash, ids) in &by_content {
        let made = shared.made.get(hash).copied().unwrap_or(1) as usize;
        if ids.len() > made {
            v.push(format!(
                "duplicated: content {} is assets {ids:?}, made as {made} files",
                &hash[..12]
            ));
        }
    }
    for (hash, made) in &shared.made {
        let away = shared.edited_away.get(hash).copied().unwrap_or(0);
        let paired = shared.deleted_beside_twin.get(hash).copied().unwrap_or(0);
        let have = by_content.get(hash).map_or(0, Vec::len);
        if have + ((away + paired) as usize) < *made as usize {
            v.push(format!(
                "lost: content {} was made as {made} files ({away} edited away, {paired} deleted \
                 beside a twin) but is {have} assets",
                &hash[..12]
            ));
        }
    }
    for ((device, n), (path, hash)) in &shared.renamed {
        // Numbered where another photo held the name (an edit kept apart from a photo
        // deleted elsewhere leaves that photo its name).
        let there = assets
            .iter()
            .any(|a| a.file_hash.to_hex() == *hash && unnumbered(&a.path) == *path);
        if !there {
            let now: Vec<&str> = assets
                .iter()
                .filter(|a| a.file_hash.to_hex() == *hash)
                .map(|a| a.path.as_str())
                .collect();
            v.push(format!(
                "renamed: device{device}'s photo {n} was moved to {path:?} but its asset is at {now:?}"
            ));
        }
    }
    for (asset_id, (stamp, value)) in &shared.favorites {
        match assets.iter().find(|a| a.asset_id == *asset_id) {
            Some(a) if a.favorite != *value => v.push(format!(
                "favourite of {asset_id} is {} but its newest edit ({stamp:?}) set {value}",
                a.favorite
            )),
            Some(_) => {}
            None => v.push(format!("{asset_id} was edited but is not in the library")),
        }
    }

    let cloud_view: BTreeSet<(String, bool, bool, bool)> = assets
        .iter()
        .map(|a| {
            let trashed = matches!(a.state, AssetState::Trashed(_));
            (a.asset_id.clone(), a.favorite, a.hidden, trashed)
        })
        .collect();
    let live: Vec<String> = {
        let mut live: Vec<String> = assets
            .iter()
            .filter(|a| a.state == AssetState::Live)
            .map(|a| a.file_hash.to_hex())
            .collect();
        live.sort();
        live
    };
    let mut first_view: Option<&View> = None;
    for (i, view) in shared.views.iter().enumerate().take(devices) {
        let Some(view) = view else {
            v.push(format!("device{i} never reported its library"));
            continue;
        };
        let shown: BTreeSet<(String, bool, bool, bool)> = view
            .iter()
            .map(|(id, fav, hidden, trashed, _)| (id.clone(), *fav, *hidden, *trashed))
            .collect();
        for missing in cloud_view.difference(&shown) {
            v.push(format!(
                "device{i} does not show {missing:?} as the library does"
            ));
        }
        for extra in shown.difference(&cloud_view) {
            v.push(format!(
                "device{i} shows {extra:?}, which the library does not"
            ));
        }
        match first_view {
            None => first_view = Some(view),
            Some(first) if first != view => {
                v.push(format!("device{i}'s albums differ from device0's"));
            }
            Some(_) => {}
        }
        let folder = root.join(format!("device{i}/folder"));
        let files = folder_files(&folder)?;
        for (path, hash) in &files {
            let placed = assets.iter().any(|a| {
                a.state == AssetState::Live
                    && a.file_hash.to_hex() == *hash
                    && unnumbered(&a.path) == unnumbered(path)
            });
            if !placed {
                let with_bytes: Vec<(&str, &AssetState)> = assets
                    .iter()
                    .filter(|a| a.file_hash.to_hex() == *hash)
                    .map(|a| (a.path.as_str(), &a.state))
                    .collect();
                v.push(format!(
                    "device{i} holds {path:?} ({}) where no live asset with its bytes is \
                     (assets with its bytes: {with_bytes:?})",
                    &hash[..8]
                ));
            }
        }
        let mut held: Vec<String> = files.into_iter().map(|(_, hash)| hash).collect();
        held.sort();
        for hash in &held {
            if !shared.captured.contains_key(hash) {
                v.push(format!(
                    "device{i} holds a file no camera took ({}): a partial or corrupt file",
                    &hash[..12]
                ));
            }
        }
        if held != live {
            let short = |h: &String| h[..8].to_string();
            let lacking: Vec<String> = live
                .iter()
                .filter(|h| !held.contains(h))
                .map(short)
                .collect();
            let extra: Vec<String> = held
                .iter()
                .filter(|h| !live.contains(h))
                .map(short)
                .collect();
            v.push(format!(
                "device{i} holds {} photos but the library has {} live (lacking {lacking:?}, extra {extra:?})",
                held.len(),
                live.len()
            ));
        }
    }

    let store = Store::open_local(
        &root.join("cloud/store"),
        clock,
        Arc::new(SeededEntropy::new(0)),
        StoreConfig::default(),
    )?;
    let scrub = store.scrub()?;
    if !scrub.corrupt_chunks.is_empty() || !scrub.corrupt_packs.is_empty() {
        v.push(format!(
            "store: {} corrupt chunks, {} corrupt packs",
            scrub.corrupt_chunks.len(),
            scrub.corrupt_packs.len()
        ));
    }
    for db in sqlite_files(root)? {
        let conn = rusqlite::Connection::open(&db)?;
        let verdict: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if verdict != "ok" {
            v.push(format!("{}: integrity_check says {verdict}", db.display()));
        }
    }
    Ok(report)
}

/// The photos in a folder and its folders, by relative path, with their content hashes
/// (hidden bookkeeping left out).
fn folder_files(folder: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    let mut stack = vec![folder.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            } else if entry.file_type()?.is_file() {
                let rel = entry
                    .path()
                    .strip_prefix(folder)?
                    .to_string_lossy()
                    .into_owned();
                let hash = blake3::hash(&std::fs::read(entry.path())?)
                    .to_hex()
                    .to_string();
                files.push((rel, hash));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// A path without the " (n)"s a library and then a device add to a taken name.
fn unnumbered(path: &str) -> String {
    let (mut stem, ext) = match path.rfind('.') {
        Some(at) if at > path.rfind('/').map_or(0, |s| s + 1) => path.split_at(at),
        _ => (path, ""),
    };
    while let Some((base, n)) = stem.rsplit_once(" (")
        && n.ends_with(')')
        && n[..n.len() - 1].parse::<u32>().is_ok()
    {
        stem = base;
    }
    format!("{stem}{ext}")
}

fn sqlite_files(root: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "sqlite") {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}
