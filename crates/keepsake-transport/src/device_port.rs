//! The device's `Cloud` port, implemented over gRPC by [`CloudClient`].

use crate::client::{CallError, pb};
use crate::cloud_client::CloudClient;
use crate::convert::{WireManifest, chunk_id, id_bytes};
use bytes::Bytes;
use keepsake_device::{
    Cloud, CloudError, CommitReply, ContentLookup, FeedPage, NewAsset, RemoteAsset, RemoteState,
};
use keepsake_store::{ChunkId, Manifest, ManifestId};

impl From<CallError> for CloudError {
    fn from(e: CallError) -> Self {
        Self {
            transient: e.is_transient(),
            reason: e.reason().to_string(),
            message: e.message().to_string(),
            missing_chunks: e.missing_chunks().to_vec(),
        }
    }
}

fn bad_reply(what: &str, e: impl std::fmt::Display) -> CloudError {
    CloudError {
        transient: false,
        reason: "BAD_REPLY".into(),
        message: format!("the server sent a malformed {what}: {e}"),
        missing_chunks: Vec::new(),
    }
}

fn remote_asset(a: pb::Asset) -> Result<RemoteAsset, CloudError> {
    let state = match pb::AssetState::try_from(a.state) {
        Ok(pb::AssetState::Trashed) => RemoteState::Trashed,
        Ok(pb::AssetState::Purged) => RemoteState::Purged,
        _ => RemoteState::Live,
    };
    Ok(RemoteAsset {
        manifest: chunk_id("manifest_id", &a.manifest_id).map_err(|e| bad_reply("asset", e))?,
        file_hash: chunk_id("file_hash", &a.file_hash).map_err(|e| bad_reply("asset", e))?,
        asset_id: a.asset_id,
        version: a.version,
        size: a.size,
        original_name: a.original_name,
        state,
    })
}

impl Cloud for CloudClient {
    async fn lookup(&mut self, file_hash: &ChunkId) -> Result<ContentLookup, CloudError> {
        let reply = self.find_assets_by_content(&[*file_hash]).await?;
        let Some(m) = reply.into_iter().next() else {
            return Ok(ContentLookup::default());
        };
        Ok(ContentLookup {
            asset: m.assets.first().map(|a| (a.asset_id.clone(), a.version)),
            purged: m.purged_at_ms.is_some(),
        })
    }

    async fn begin_upload(&mut self, bytes: u64, request_id: &str) -> Result<String, CloudError> {
        Ok(CloudClient::begin_upload(self, bytes, request_id).await?)
    }

    async fn find_missing(
        &mut self,
        session: &str,
        ids: &[ChunkId],
    ) -> Result<Vec<ChunkId>, CloudError> {
        Ok(CloudClient::find_missing(self, session, ids).await?)
    }

    async fn put_chunks(
        &mut self,
        session: &str,
        chunks: Vec<(ChunkId, Bytes)>,
        acknowledged: &mut Vec<ChunkId>,
    ) -> Result<(), CloudError> {
        Ok(CloudClient::put_chunks(self, session, chunks, acknowledged).await?)
    }

    async fn put_manifest(
        &mut self,
        session: &str,
        manifest: &Manifest,
    ) -> Result<ManifestId, CloudError> {
        Ok(CloudClient::put_manifest(self, session, manifest).await?)
    }

    async fn commit(&mut self, asset: NewAsset) -> Result<CommitReply, CloudError> {
        let NewAsset {
            request_id,
            manifest,
            original_name,
            video,
            capture_time,
            reservation_id,
            asset_id,
            base_version,
        } = asset;
        let kind = if video {
            pb::AssetKind::Video
        } else {
            pb::AssetKind::Photo
        };
        let reply = self
            .commit_asset(pb::CommitAssetRequest {
                request_id,
                asset_id: asset_id.unwrap_or_default(),
                base_version,
                manifest_id: id_bytes(&manifest),
                kind: kind.into(),
                capture_time_ms: capture_time,
                width: None,
                height: None,
                original_name,
                reservation_id,
            })
            .await?;
        Ok(CommitReply {
            asset_id: reply.asset_id,
            version: reply.version,
            deduplicated: reply.deduplicated,
        })
    }

    async fn changes(&mut self, cursor: u64) -> Result<FeedPage, CloudError> {
        let page = self.list_changes(cursor, 1000).await?;
        let mut assets = Vec::new();
        for change in page.changes {
            if let Some(pb::change::Row::Asset(a)) = change.row {
                assets.push(remote_asset(a)?);
            }
        }
        Ok(FeedPage {
            assets,
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

    async fn trash(&mut self, asset_id: &str) -> Result<(), CloudError> {
        Ok(self.trash_asset(asset_id).await?)
    }
}
