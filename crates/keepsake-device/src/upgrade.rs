//! Bringing a journal written before a file was an asset up to date.

use crate::DeviceError;
use crate::cloud::Edit;
use crate::journal::{Journal, Key};
use std::collections::{HashMap, HashSet};

/// Brings a journal written before a file was an asset up to date, once. Two files an
/// older device linked to one asset (a copy, a twin) become two: the first by path keeps
/// the asset, the others go as new photos (their chunks are the cloud's already: only
/// a manifest travels). A file of the library in a folder of its own was put there by a
/// person (older devices wrote every download at the top): its folder is sent as a
/// rename, since the library kept only its name. Downloads an older device numbered
/// (`dup (2).jpg`) keep their names and are never sent back as renames.
pub(crate) fn keep_files_apart(
    journal: &Journal,
    now_ms: i64,
    device: &str,
) -> Result<(), DeviceError> {
    if journal.get(Key::FilesApart)?.is_some() {
        return Ok(());
    }
    let mut claimed = HashSet::new();
    let mut rows = journal.files()?;
    // The file under the photo's own name keeps it; its copies become photos of their own.
    let mut own_name = HashMap::new();
    for row in &rows {
        if let Some(asset_id) = &row.asset_id
            && let Some(meta) = journal.meta(asset_id)?
        {
            own_name.insert(
                row.path.clone(),
                meta.name == keepsake_path::file_name(&row.path),
            );
        }
    }
    rows.sort_by_key(|r| {
        (
            !own_name.get(&r.path).copied().unwrap_or(false),
            r.path.clone(),
        )
    });
    for mut row in rows {
        let Some(asset_id) = row.asset_id.clone() else {
            continue;
        };
        if row.lib_path.is_some() {
            claimed.insert(asset_id);
            continue;
        }
        if !claimed.insert(asset_id.clone()) {
            tracing::info!(path = %row.path, asset = %asset_id, "a file linked to another's photo becomes a photo of its own");
            row.asset_id = None;
            row.version = None;
            row.synced = false;
            row.nonce = journal.next_nonce()?;
            journal.upsert(&row)?;
            continue;
        }
        if row.path.contains('/') {
            let edit = Edit::Rename {
                asset_id,
                path: row.path.clone(),
            };
            journal.queue_edit(&edit, now_ms, device)?;
            row.lib_path = Some(row.path.clone());
            journal.upsert(&row)?;
        }
    }
    journal.set(Key::FilesApart, "1")?;
    Ok(())
}
