//! `keepsake export DIR`: every original in the library (and, on request, every earlier
//! version) written to a folder with a JSON sidecar of its metadata — so the whole library
//! can always be taken out, even when the cloud holds the only copy. Files are verified
//! against their hash before they get their final name; a second run skips what is
//! already there and correct, so an interrupted export resumes.

use crate::device_cli::{Credentials, ServerArgs, signed_in, whole_feed};
use anyhow::{Context, Result, bail};
use keepsake_device::safe_name;
use keepsake_store::{ChunkId, ManifestId};
use keepsake_transport::client::{BearerAuth, pb};
use keepsake_transport::cloud_client::{ClientConfig, CloudClient};
use keepsake_transport::convert::{WireManifest, chunk_id};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Chunks fetched per call: bounds memory for a large video.
const CHUNKS_PER_CALL: usize = 64;

fn hash_of_file(path: &Path) -> Option<ChunkId> {
    let mut hasher = blake3::Hasher::new();
    std::io::copy(&mut std::fs::File::open(path).ok()?, &mut hasher).ok()?;
    Some(ChunkId(*hasher.finalize().as_bytes()))
}

/// Writes one stored file to `dest`, verified, unless it is already there.
async fn fetch(
    cloud: &mut CloudClient,
    manifest_id: &ManifestId,
    file_hash: &ChunkId,
    dest: &Path,
) -> Result<bool> {
    if dest.exists() && hash_of_file(dest).as_ref() == Some(file_hash) {
        return Ok(false);
    }
    let manifest = WireManifest::try_from(cloud.get_manifest(manifest_id).await?)
        .map_err(|e| anyhow::anyhow!("the server sent a malformed manifest: {e}"))?
        .0;
    let temp = dest.with_file_name(format!(".keepsake-export-{}", &file_hash.to_hex()[..16]));
    let mut file = std::fs::File::create(&temp)?;
    let mut hasher = blake3::Hasher::new();
    for group in manifest.entries.chunks(CHUNKS_PER_CALL) {
        let mut ids: Vec<ChunkId> = group.iter().map(|e| e.chunk).collect();
        ids.sort();
        ids.dedup();
        let got: BTreeMap<ChunkId, _> = cloud.get_chunks(&ids).await?.into_iter().collect();
        for entry in group {
            let data = got
                .get(&entry.chunk)
                .with_context(|| format!("the server did not send chunk {}", entry.chunk))?;
            hasher.update(data);
            file.write_all(data)?;
        }
    }
    if ChunkId(*hasher.finalize().as_bytes()) != *file_hash {
        drop(file);
        let _ = std::fs::remove_file(&temp);
        bail!(
            "{} did not match its hash; nothing was written",
            dest.display()
        );
    }
    file.sync_all()?;
    std::fs::rename(&temp, dest)?;
    Ok(true)
}

fn versioned_name(name: &str, version: u32) -> String {
    let dir = keepsake_path::parent(name);
    let (stem, ext) = keepsake_path::split_extension(keepsake_path::file_name(name));
    let file = format!("{stem}.v{version}{ext}");
    if dir.is_empty() {
        file
    } else {
        format!("{dir}/{file}")
    }
}

/// Runs the export; prints what it wrote.
pub async fn run(
    server: ServerArgs,
    credentials: Credentials,
    dir: PathBuf,
    versions: bool,
    include_trash: bool,
) -> Result<()> {
    let (channel, token) = signed_in(&server, &credentials).await?;
    let mut cloud = CloudClient::new(channel, BearerAuth::new(&token), ClientConfig::default());
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (mut assets, mut albums) = (Vec::new(), BTreeMap::<String, Vec<String>>::new());
    for change in whole_feed(cloud.raw().1).await? {
        match change.row {
            Some(pb::change::Row::Asset(a)) => assets.push(a),
            Some(pb::change::Row::Album(album)) if !album.deleted => {
                for member in album.members {
                    albums.entry(member).or_default().push(album.name.clone());
                }
            }
            _ => {}
        }
    }
    let (mut written, mut kept, mut bytes) = (0usize, 0usize, 0u64);
    let mut taken: HashSet<String> = HashSet::new();
    // Live photos first, so each keeps its exact path; one in Recently Deleted whose path
    // a live one holds is numbered.
    assets.sort_by_key(|a| {
        (
            a.state != pb::AssetState::Live as i32,
            a.capture_time_ms,
            a.asset_id.clone(),
        )
    });
    let wanted = |a: &pb::Asset| match pb::AssetState::try_from(a.state) {
        Ok(pb::AssetState::Live) => true,
        Ok(pb::AssetState::Trashed) => include_trash,
        _ => false,
    };
    let (files, total) = assets
        .iter()
        .filter(|a| wanted(a))
        .fold((0u64, 0u64), |(n, b), a| (n + 1, b + a.size));
    let bar = crate::progress::Bar::new();
    let (mut done_files, mut done_bytes) = (0u64, 0u64);
    for a in &assets {
        let state = pb::AssetState::try_from(a.state).unwrap_or(pb::AssetState::Live);
        if !wanted(a) {
            continue;
        }
        bar.show("exporting", done_files, files, done_bytes, total);
        (done_files, done_bytes) = (done_files + 1, done_bytes + a.size);
        // The library's path, folders and exact name; one per asset, stable across runs
        // (the same order gives the same numbers). A path that is not plain (never from
        // this server) falls back to a safe name at the top.
        let base = if keepsake_path::check(&a.path).is_ok() {
            a.path.clone()
        } else {
            safe_name(&a.original_name, &a.asset_id)
        };
        let mut name = base.clone();
        let mut n = 2;
        while !taken.insert(keepsake_path::fold(&name)) {
            name = keepsake_path::numbered(&base, n);
            n += 1;
        }
        if let Some(parent) = dir.join(&name).parent() {
            std::fs::create_dir_all(parent)?;
        }
        let manifest = chunk_id("manifest_id", &a.manifest_id)?;
        let hash = chunk_id("file_hash", &a.file_hash)?;
        if fetch(&mut cloud, &manifest, &hash, &dir.join(&name)).await? {
            written += 1;
            bytes += a.size;
        } else {
            kept += 1;
        }
        let mut history = Vec::new();
        if versions {
            let req = pb::ListVersionsRequest {
                asset_id: a.asset_id.clone(),
            };
            let listed = cloud
                .library_call("ListVersions", async |l| l.list_versions(req).await)
                .await?;
            for v in listed.versions.iter().filter(|v| v.version != a.version) {
                let file = versioned_name(&name, v.version);
                let (m, h) = (
                    chunk_id("manifest_id", &v.manifest_id)?,
                    chunk_id("file_hash", &v.file_hash)?,
                );
                if fetch(&mut cloud, &m, &h, &dir.join(&file)).await? {
                    written += 1;
                    bytes += v.size;
                }
                history.push(serde_json::json!({
                    "version": v.version,
                    "file": file,
                    "blake3": h.to_hex(),
                    "size": v.size,
                    "created_at_ms": v.created_at_ms,
                    "device": v.device,
                }));
            }
        }
        let sidecar = serde_json::json!({
            "asset_id": a.asset_id,
            "file": name,
            "path": a.path,
            "original_name": a.original_name,
            "kind": if a.kind == pb::AssetKind::Video as i32 { "video" } else { "photo" },
            "capture_time_ms": a.capture_time_ms,
            "width": a.width,
            "height": a.height,
            "size": a.size,
            "blake3": hash.to_hex(),
            "version": a.version,
            "favorite": a.favorite,
            "hidden": a.hidden,
            "title": a.title,
            "in_recently_deleted": state == pb::AssetState::Trashed,
            "albums": albums.get(&a.asset_id).cloned().unwrap_or_default(),
            "earlier_versions": history,
            "camera": a.details.as_ref().map(|d| serde_json::json!({
                "make": d.camera_make,
                "model": d.camera_model,
            })),
            "place": a.details.as_ref().and_then(|d| d.latitude.zip(d.longitude)).map(
                |(lat, lon)| serde_json::json!({ "latitude": lat, "longitude": lon })
            ),
            "orientation": a.details.as_ref().map_or(0, |d| d.orientation),
            "duration_ms": a.details.as_ref().and_then(|d| d.duration_ms),
            "lens": a.details.as_ref().map(|d| d.lens.as_str()).filter(|l| !l.is_empty()),
            "altitude_m": a.details.as_ref().and_then(|d| d.altitude_m),
            "utc_offset_minutes": a.details.as_ref().and_then(|d| d.utc_offset_minutes),
            "codec": a.details.as_ref().map(|d| d.codec.as_str()).filter(|c| !c.is_empty()),
        });
        std::fs::write(
            dir.join(format!("{name}.json")),
            serde_json::to_vec_pretty(&sidecar)?,
        )?;
    }
    bar.clear();
    println!(
        "exported to {}: {written} files written ({:.1} MB), {kept} already there and verified",
        dir.display(),
        bytes as f64 / 1e6
    );
    Ok(())
}
