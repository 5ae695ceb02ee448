//! A person's edits on a device (favourite, hide, albums, delete, restore): checked against
//! what the device knows, applied to its view at once, and queued in the journal's outbox
//! until the cloud acknowledges them — so they survive restarts and offline spells.

use crate::DeviceError;
use crate::cloud::{Edit, Hlc};
use crate::journal::{Journal, MetaRow};
use serde::{Deserialize, Serialize};

/// Longest album name accepted (the cloud's own bound).
const MAX_ALBUM_NAME: usize = 256;

/// An asset as this device shows it: its cloud metadata with local edits on top.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalAsset {
    /// The asset's id.
    pub asset_id: String,
    /// Its path in the library folder, or its name while in Recently Deleted.
    pub name: String,
    /// In Recently Deleted.
    pub trashed: bool,
    /// Marked a favourite.
    pub favorite: bool,
    /// Hidden.
    pub hidden: bool,
    /// The names of the albums it is in.
    pub albums: Vec<String>,
}

/// An album as this device shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalAlbum {
    /// The album's id.
    pub album_id: String,
    /// Its name.
    pub name: String,
    /// Its member assets.
    pub members: Vec<String>,
}

fn unknown(kind: &'static str, id: &str) -> DeviceError {
    DeviceError::Unknown {
        kind,
        id: id.to_string(),
    }
}

/// Refuses an edit of something the device has never heard of (a typo, another account's
/// id): it would only fail later, in the outbox, where nobody sees it.
fn check(journal: &Journal, edit: &Edit) -> Result<(), DeviceError> {
    if let Some(asset) = edit.asset()
        && journal.meta(asset)?.is_none()
    {
        return Err(unknown("asset", asset));
    }
    let album_known = |id: &str| -> Result<bool, DeviceError> {
        Ok(journal.albums()?.iter().any(|(a, _, _)| a == id))
    };
    match edit {
        Edit::PutAlbum { album_id, name } => {
            if album_id.is_empty() || album_id.len() > 64 {
                return Err(DeviceError::Invalid(
                    "an album id is 1 to 64 bytes".to_string(),
                ));
            }
            if name.trim().is_empty() || name.len() > MAX_ALBUM_NAME {
                return Err(DeviceError::Invalid(format!(
                    "an album name is 1 to {MAX_ALBUM_NAME} bytes and not blank"
                )));
            }
        }
        Edit::DeleteAlbum { album_id } | Edit::AlbumMember { album_id, .. }
            if !album_known(album_id)? =>
        {
            return Err(unknown("album", album_id));
        }
        Edit::Rename { path, .. } => {
            keepsake_path::check(path).map_err(|e| DeviceError::Invalid(e.to_string()))?;
        }
        _ => {}
    }
    Ok(())
}

/// Checks an edit, queues it and shows it in the device's view at once.
pub(crate) fn queue(
    journal: &Journal,
    edit: &Edit,
    now_ms: i64,
    device: &str,
) -> Result<Hlc, DeviceError> {
    check(journal, edit)?;
    let stamp = journal.queue_edit(edit, now_ms, device)?;
    show(journal, edit)?;
    tracing::info!(?edit, wall_ms = stamp.wall_ms, "edit queued");
    Ok(stamp)
}

/// Puts an edit into the device's view (the feed may have overwritten it with older state
/// while the edit waited in the outbox).
pub(crate) fn show(journal: &Journal, edit: &Edit) -> Result<(), DeviceError> {
    let with_meta = |asset: &str, change: &dyn Fn(&mut MetaRow)| -> Result<(), DeviceError> {
        if let Some(mut m) = journal.meta(asset)? {
            change(&mut m);
            journal.put_meta(&m)?;
        }
        Ok(())
    };
    match edit {
        Edit::Favorite { asset_id, value } => with_meta(asset_id, &|m| m.favorite = *value)?,
        Edit::Hidden { asset_id, value } => with_meta(asset_id, &|m| m.hidden = *value)?,
        // The device's view keeps no titles.
        Edit::Title { .. } => {}
        Edit::Trash { asset_id, .. } => with_meta(asset_id, &|m| m.state = "trashed".into())?,
        Edit::Restore { asset_id } => with_meta(asset_id, &|m| m.state = "live".into())?,
        Edit::Rename { asset_id, path } => with_meta(asset_id, &|m| m.name = path.clone())?,
        Edit::PutAlbum { album_id, name } => {
            let members = journal
                .albums()?
                .into_iter()
                .find(|(a, _, _)| a == album_id)
                .map(|(_, _, m)| m)
                .unwrap_or_default();
            journal.put_album(album_id, name, &members)?;
        }
        Edit::DeleteAlbum { album_id } => journal.remove_album(album_id)?,
        Edit::AlbumMember {
            album_id,
            asset_id,
            present,
        } => {
            if let Some((_, name, mut members)) = journal
                .albums()?
                .into_iter()
                .find(|(a, _, _)| a == album_id)
            {
                members.retain(|m| m != asset_id);
                if *present {
                    members.push(asset_id.clone());
                    members.sort();
                }
                journal.put_album(album_id, &name, &members)?;
            }
        }
    }
    Ok(())
}

/// The device's view of its library: every live or trashed asset with its metadata.
pub(crate) fn assets(journal: &Journal) -> Result<Vec<LocalAsset>, DeviceError> {
    let albums = journal.albums()?;
    let mut out = Vec::new();
    for m in journal.metas()? {
        let name = match journal.file_of_asset(&m.asset_id)? {
            Some(f) => f.path,
            None => m.name.clone(),
        };
        out.push(LocalAsset {
            albums: albums
                .iter()
                .filter(|(_, _, members)| members.contains(&m.asset_id))
                .map(|(_, name, _)| name.clone())
                .collect(),
            asset_id: m.asset_id,
            name,
            trashed: m.state == "trashed",
            favorite: m.favorite,
            hidden: m.hidden,
        });
    }
    Ok(out)
}

/// The device's albums.
pub(crate) fn albums(journal: &Journal) -> Result<Vec<LocalAlbum>, DeviceError> {
    Ok(journal
        .albums()?
        .into_iter()
        .map(|(album_id, name, members)| LocalAlbum {
            album_id,
            name,
            members,
        })
        .collect())
}
