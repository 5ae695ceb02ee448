//! The device's `Cloud` port, implemented over gRPC by [`CloudClient`].

use crate::client::{CallError, pb};
use crate::cloud_client::CloudClient;
use crate::wire::{
    MAX_CONTENT_HASHES, WireManifest, chunk_id, id_bytes, manifest_edit_to_wire, manifest_to_wire,
};
use bytes::Bytes;
use keepsake_device::{
    Cloud, CloudError, CommitReply, ContentHolder, ContentLookup, Edit, FeedPage, Hlc,
    LedgerReport, NewAsset, Reason, RemoteAlbum, RemoteAsset, RemoteState,
};
use keepsake_store::{ChunkId, Manifest, ManifestId};

impl From<CallError> for CloudError {
    fn from(e: CallError) -> Self {
        Self {
            transient: e.is_transient(),
            reason: Reason::parse(e.reason()),
            message: e.message().to_string(),
        }
    }
}

fn bad_reply(what: &str, e: impl std::fmt::Display) -> CloudError {
    CloudError {
        transient: false,
        reason: Reason::BadReply,
        message: format!("the server sent a malformed {what}: {e}"),
    }
}

fn remote_asset(a: pb::Asset) -> Result<RemoteAsset, CloudError> {
    // Every field is named, so a new one in the proto is a compile error here.
    let pb::Asset {
        asset_id,
        kind: _,
        capture_time_ms: _,
        width: _,
        height: _,
        original_name,
        version,
        manifest_id,
        file_hash,
        size,
        favorite,
        hidden,
        title: _,
        state,
        state_at_ms: _,
        clock,
        derivatives,
        derivation: _,
        damaged,
        path,
        // The device keeps the file itself: what it says is read from it when needed.
        details: _,
        // Each resource is a file of its own at its path on a device; pairing is the
        // library's and the page's view.
        pair_of: _,
        pair_role: _,
    } = a;
    // An empty path is an asset from before paths: its name, at the top.
    let path = if path.is_empty() {
        original_name.clone()
    } else {
        path
    };
    let preview = derivatives
        .iter()
        .find(|d| d.role == "preview" || d.role == "poster")
        .map(|d| chunk_id("manifest_id", &d.manifest_id))
        .transpose()
        .map_err(|e| bad_reply("asset", e))?;
    let state = match pb::AssetState::try_from(state) {
        Ok(pb::AssetState::Trashed) => RemoteState::Trashed,
        Ok(pb::AssetState::Purged) => RemoteState::Purged,
        _ => RemoteState::Live,
    };
    Ok(RemoteAsset {
        manifest: chunk_id("manifest_id", &manifest_id).map_err(|e| bad_reply("asset", e))?,
        file_hash: chunk_id("file_hash", &file_hash).map_err(|e| bad_reply("asset", e))?,
        asset_id,
        version,
        size,
        original_name,
        path,
        state,
        favorite,
        hidden,
        clock: crate::wire::clock_or_zero(clock),
        preview,
        damaged,
    })
}

fn remote_album(a: pb::Album) -> RemoteAlbum {
    let pb::Album {
        album_id,
        name,
        deleted,
        members,
        clock,
    } = a;
    RemoteAlbum {
        album_id,
        name,
        deleted,
        members,
        clock: crate::wire::clock_or_zero(clock),
    }
}

impl Cloud for CloudClient {
    fn lane(&self) -> Option<Self> {
        // A clone shares the HTTP/2 connection: each lane's calls are streams of their own.
        Some(self.clone())
    }

    async fn lookups(&mut self, file_hashes: &[ChunkId]) -> Result<Vec<ContentLookup>, CloudError> {
        let mut found = Vec::with_capacity(file_hashes.len());
        for hashes in file_hashes.chunks(MAX_CONTENT_HASHES) {
            let mut matches: std::collections::HashMap<Vec<u8>, ContentLookup> = self
                .find_assets_by_content(hashes)
                .await?
                .into_iter()
                .map(|m| {
                    let lookup = ContentLookup {
                        assets: m
                            .assets
                            .iter()
                            .map(|a| ContentHolder {
                                asset_id: a.asset_id.clone(),
                                version: a.version,
                                path: if a.path.is_empty() {
                                    a.original_name.clone()
                                } else {
                                    a.path.clone()
                                },
                                trashed: a.state == i32::from(pb::AssetState::Trashed),
                            })
                            .collect(),
                        purged_paths: m.purged_paths,
                    };
                    (m.file_hash.to_vec(), lookup)
                })
                .collect();
            found.extend(
                hashes
                    .iter()
                    .map(|h| matches.remove(&h.0[..]).unwrap_or_default()),
            );
        }
        Ok(found)
    }

    async fn begin_upload(&mut self, bytes: u64, request_id: &str) -> Result<String, CloudError> {
        Ok(CloudClient::begin_upload(self, bytes, request_id).await?)
    }

    async fn end_upload(&mut self, reservation: &str) -> Result<(), CloudError> {
        Ok(CloudClient::end_upload(self, reservation).await?)
    }

    async fn find_missing(
        &mut self,
        session: &str,
        ids: &[ChunkId],
    ) -> Result<Vec<ChunkId>, CloudError> {
        Ok(CloudClient::find_missing(self, session, ids).await?)
    }

    async fn report_state(&mut self, report: &LedgerReport) -> Result<(), CloudError> {
        let (_, _, accounts) = self.raw();
        let LedgerReport {
            state,
            reason,
            reason_message,
            reason_fix,
            pending_uploads,
            pending_upload_bytes,
            pending_downloads,
            pending_download_bytes,
            done_items,
            failed_items,
            network,
            battery_percent,
            charging,
            free_bytes,
        } = report.clone();
        let state = pb::DeviceState {
            state,
            reason: reason.unwrap_or_default(),
            pending_items: pending_uploads,
            pending_bytes: pending_upload_bytes,
            done_items,
            failed_items,
            network,
            battery_percent: battery_percent.map(u32::from),
            charging,
            free_bytes,
            pending_downloads,
            pending_download_bytes,
            reason_message: reason_message.unwrap_or_default(),
            reason_fix: reason_fix.unwrap_or_default(),
        };
        accounts
            .report_device_state(pb::ReportDeviceStateRequest { state: Some(state) })
            .await
            .map_err(CallError::from)?;
        Ok(())
    }

    async fn put_chunks(
        &mut self,
        session: &str,
        chunks: Vec<(ChunkId, Bytes)>,
        acknowledged: &mut Vec<ChunkId>,
    ) -> Result<(), CloudError> {
        Ok(CloudClient::put_chunks(self, session, chunks, acknowledged).await?)
    }

    async fn commit(
        &mut self,
        asset: NewAsset,
        manifest: &Manifest,
        base: Option<(&ManifestId, &Manifest)>,
    ) -> Result<CommitReply, CloudError> {
        let (whole, edit) = match base {
            Some((id, base)) => (None, Some(manifest_edit_to_wire(id, base, manifest))),
            None => (Some(manifest_to_wire(manifest)), None),
        };
        match commit_carrying(self, asset.clone(), whole, edit).await {
            Err(e) if !e.transient && e.reason == Reason::NotFound => {
                // A cloud that ignores a manifest sent with the commit (an older server),
                // or an edit whose base it no longer holds: the manifest goes on its own.
                tracing::debug!(message = %e.message, "manifest not taken with the commit; sending it first");
                let stored =
                    put_manifest_alone(self, &asset.reservation_id, manifest, base).await?;
                commit_carrying(
                    self,
                    NewAsset {
                        manifest: stored,
                        ..asset
                    },
                    None,
                    None,
                )
                .await
            }
            other => other,
        }
    }

    async fn changes(&mut self, cursor: u64) -> Result<FeedPage, CloudError> {
        let page = self.list_changes(cursor, 1000).await?;
        let (mut assets, mut albums) = (Vec::new(), Vec::new());
        for change in page.changes {
            match change.row {
                Some(pb::change::Row::Asset(a)) => assets.push(remote_asset(a)?),
                Some(pb::change::Row::Album(a)) => albums.push(remote_album(a)),
                None => {}
            }
        }
        Ok(FeedPage {
            assets,
            albums,
            cursor: page.cursor,
            more: page.more,
        })
    }

    async fn manifest(&mut self, id: &ManifestId) -> Result<Manifest, CloudError> {
        let wire = self.get_manifest(id).await?;
        WireManifest::try_from(wire)
            .map(|m| m.0)
            .map_err(|e| bad_reply("manifest", e))
    }

    async fn chunks(&mut self, ids: &[ChunkId]) -> Result<Vec<(ChunkId, Bytes)>, CloudError> {
        Ok(self.get_chunks(ids).await?)
    }

    async fn edits(
        &mut self,
        edits: &[(Edit, Hlc)],
    ) -> Result<Vec<Result<(), CloudError>>, CloudError> {
        let req = pb::ApplyEditsRequest {
            edits: edits
                .iter()
                .map(|(edit, stamp)| pb::LibraryEdit {
                    edit: Some(edit_to_wire(edit, stamp)),
                })
                .collect(),
        };
        let reply = match self
            .library_call("ApplyEdits", async |l| l.apply_edits(req).await)
            .await
        {
            Ok(reply) => reply,
            // An older server: one call per edit.
            Err(e) if e.reason() == "UNIMPLEMENTED" => {
                return edits_one_by_one(self, edits).await;
            }
            Err(e) => return Err(e.into()),
        };
        if reply.outcomes.len() != edits.len() {
            return Err(bad_reply(
                "ApplyEdits answer",
                format!(
                    "{} outcomes for {} edits",
                    reply.outcomes.len(),
                    edits.len()
                ),
            ));
        }
        Ok(reply
            .outcomes
            .into_iter()
            .map(
                |pb::EditOutcome {
                     applied: _,
                     reason,
                     message,
                 }| {
                    if reason.is_empty() {
                        Ok(())
                    } else {
                        Err(CloudError {
                            transient: false,
                            reason: Reason::parse(&reason),
                            message,
                        })
                    }
                },
            )
            .collect())
    }

    async fn span_signature(
        &mut self,
        base: &ManifestId,
        stretch: (u64, u64),
        wanted: (&str, &[ChunkId]),
    ) -> Result<Option<Vec<u8>>, CloudError> {
        Ok(CloudClient::span_signature(self, base, stretch, Some(wanted)).await?)
    }

    async fn put_chunks_by_delta(
        &mut self,
        session: &str,
        base: &ManifestId,
        span: (u64, u64),
        chunks: &[(ChunkId, u32)],
        delta: Vec<u8>,
    ) -> Result<Vec<ChunkId>, CloudError> {
        Ok(CloudClient::put_chunks_by_delta(self, session, base, span, chunks, delta).await?)
    }
}

/// PutManifest on its own: as splices of `base` where given, whole when the cloud refuses
/// the splices for good (it takes no edits, or no longer holds the base).
async fn put_manifest_alone(
    client: &mut CloudClient,
    session: &str,
    manifest: &Manifest,
    base: Option<(&ManifestId, &Manifest)>,
) -> Result<ManifestId, CloudError> {
    if let Some(base) = base {
        match client.put_manifest_edit(session, manifest, base).await {
            Ok(id) if id == manifest.id() => return Ok(id),
            Ok(other) => {
                tracing::warn!(manifest = %other, "the cloud rebuilt another manifest from the splices");
            }
            Err(e) => {
                let e = CloudError::from(e);
                if e.transient || e.reason == Reason::MissingChunks {
                    return Err(e);
                }
                tracing::debug!(reason = %e.reason, "manifest edit refused; sending it whole");
            }
        }
    }
    Ok(client.put_manifest(session, manifest).await?)
}

/// A commit on the wire, carrying its manifest when the cloud may lack it.
async fn commit_carrying(
    client: &mut CloudClient,
    asset: NewAsset,
    manifest: Option<pb::Manifest>,
    manifest_edit: Option<pb::ManifestEdit>,
) -> Result<CommitReply, CloudError> {
    let NewAsset {
        request_id,
        manifest: manifest_id,
        original_name,
        path,
        video,
        capture_time,
        width,
        height,
        reservation_id,
        asset_id,
        base_version,
        camera,
        position_e7,
        orientation,
        duration_ms,
        content_identifier,
        lens,
        altitude_cm,
        utc_offset_minutes,
        codec,
    } = asset;
    let details = crate::wire::details_to_wire(
        position_e7,
        pb::MediaDetails {
            camera_make: camera.0,
            camera_model: camera.1,
            latitude: None,
            longitude: None,
            orientation: u32::from(orientation),
            duration_ms,
            content_identifier,
            lens,
            altitude_m: altitude_cm.map(|cm| f64::from(cm) / 100.0),
            utc_offset_minutes: utc_offset_minutes.map(i32::from),
            codec,
        },
    );
    let kind = if video {
        pb::AssetKind::Video
    } else {
        pb::AssetKind::Photo
    };
    let reply = client
        .commit_asset(pb::CommitAssetRequest {
            request_id,
            asset_id: asset_id.unwrap_or_default(),
            base_version,
            manifest_id: id_bytes(&manifest_id),
            kind: kind.into(),
            capture_time_ms: capture_time,
            width,
            height,
            original_name,
            reservation_id,
            manifest,
            manifest_edit,
            path,
            details,
        })
        .await?;
    Ok(CommitReply {
        asset_id: reply.asset_id,
        version: reply.version,
        deduplicated: reply.deduplicated,
        path: reply.path,
    })
}

/// An edit as the request its own call takes (and one entry of an ApplyEdits call).
fn edit_to_wire(edit: &Edit, stamp: &Hlc) -> pb::library_edit::Edit {
    use pb::library_edit::Edit as Wire;
    use pb::set_metadata_request::Field;
    let clock = Some(crate::wire::clock_to_wire(stamp.clone()));
    let metadata = |asset_id: &str, field| {
        Wire::SetMetadata(pb::SetMetadataRequest {
            asset_id: asset_id.into(),
            clock: clock.clone(),
            field: Some(field),
        })
    };
    match edit {
        Edit::Favorite { asset_id, value } => metadata(asset_id, Field::Favorite(*value)),
        Edit::Hidden { asset_id, value } => metadata(asset_id, Field::Hidden(*value)),
        Edit::Title { asset_id, title } => metadata(asset_id, Field::Title(title.clone())),
        Edit::PutAlbum { album_id, name } => Wire::PutAlbum(pb::PutAlbumRequest {
            album_id: album_id.clone(),
            name: name.clone(),
            clock,
        }),
        Edit::DeleteAlbum { album_id } => Wire::DeleteAlbum(pb::DeleteAlbumRequest {
            album_id: album_id.clone(),
            clock,
        }),
        Edit::AlbumMember {
            album_id,
            asset_id,
            present,
        } => Wire::SetAlbumMember(pb::SetAlbumMemberRequest {
            album_id: album_id.clone(),
            asset_id: asset_id.clone(),
            present: *present,
            clock,
        }),
        Edit::Trash { asset_id, alone } => Wire::TrashAsset(pb::TrashAssetRequest {
            asset_id: asset_id.clone(),
            alone: *alone,
        }),
        Edit::Restore { asset_id } => Wire::RestoreAsset(pb::RestoreAssetRequest {
            asset_id: asset_id.clone(),
        }),
        Edit::Rename { asset_id, path } => Wire::RenameAsset(pb::RenameAssetRequest {
            asset_id: asset_id.clone(),
            path: path.clone(),
            clock,
        }),
    }
}

/// ApplyEdits as one call per edit, for a server that predates it; the answers stop after
/// the first transient failure, as [`Cloud::edits`] says.
async fn edits_one_by_one(
    client: &mut CloudClient,
    edits: &[(Edit, Hlc)],
) -> Result<Vec<Result<(), CloudError>>, CloudError> {
    let mut answers = Vec::with_capacity(edits.len());
    for (edit, stamp) in edits {
        match edit_one(client, edit, stamp).await {
            Err(e) if e.transient && answers.is_empty() => return Err(e),
            Err(e) if e.transient => {
                answers.push(Err(e));
                break;
            }
            answer => answers.push(answer),
        }
    }
    Ok(answers)
}

/// One edit as the call of its own it was before ApplyEdits.
async fn edit_one(client: &mut CloudClient, edit: &Edit, stamp: &Hlc) -> Result<(), CloudError> {
    use pb::library_edit::Edit as Wire;
    match edit_to_wire(edit, stamp) {
        Wire::SetMetadata(req) => {
            client
                .library_call("SetMetadata", async |l| l.set_metadata(req).await)
                .await?;
        }
        Wire::PutAlbum(req) => {
            client
                .library_call("PutAlbum", async |l| l.put_album(req).await)
                .await?;
        }
        Wire::DeleteAlbum(req) => {
            client
                .library_call("DeleteAlbum", async |l| l.delete_album(req).await)
                .await?;
        }
        Wire::SetAlbumMember(req) => {
            client
                .library_call("SetAlbumMember", async |l| l.set_album_member(req).await)
                .await?;
        }
        Wire::TrashAsset(req) => client.trash_asset(&req.asset_id).await?,
        Wire::RestoreAsset(req) => {
            client
                .library_call("RestoreAsset", async |l| l.restore_asset(req).await)
                .await?;
        }
        Wire::RenameAsset(req) => {
            client
                .library_call("RenameAsset", async |l| l.rename_asset(req).await)
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ApiError, to_status};
    use keepsake_library::LibraryError as L;
    use keepsake_store::StoreError as S;

    /// The engine's typed reasons against what the server really sends: each refusal the
    /// engine acts on reaches it as its own variant, never as `Other` (a renamed code on
    /// either side fails here, not in a user's sync).
    #[test]
    fn every_reason_the_engine_acts_on_arrives_typed_from_the_server() {
        let id = ChunkId::of(b"x");
        let cases: Vec<(ApiError, Reason)> = vec![
            (
                L::QuotaExceeded {
                    used_bytes: 9,
                    reserved_bytes: 0,
                    needed_bytes: 2,
                    limit_bytes: 10,
                }
                .into(),
                Reason::QuotaExceeded,
            ),
            (S::StorageFull.into(), Reason::StorageFull),
            (L::NotLive("a".into()).into(), Reason::AssetNotLive),
            (
                L::NotFound {
                    kind: "asset",
                    id: "a".into(),
                }
                .into(),
                Reason::NotFound,
            ),
            (
                L::CursorExpired {
                    cursor: 1,
                    horizon: 2,
                }
                .into(),
                Reason::CursorExpired,
            ),
            (S::MissingChunks(vec![id]).into(), Reason::MissingChunks),
            (
                L::ClientTooOld {
                    required: "9.0.0".into(),
                    got: "0.1.0".into(),
                }
                .into(),
                Reason::ClientTooOld,
            ),
            (
                ApiError::Unauthenticated("expired".into()),
                Reason::Unauthenticated,
            ),
            (
                ApiError::Unavailable("restarting".into()),
                Reason::Unavailable,
            ),
            (
                ApiError::Stalled {
                    after_ms: 5,
                    what: "chunks".into(),
                },
                Reason::TransferStalled,
            ),
        ];
        for (err, want) in cases {
            let got = CloudError::from(CallError::from(to_status(&err))).reason;
            assert_eq!(got, want, "{err}");
        }
    }
}
