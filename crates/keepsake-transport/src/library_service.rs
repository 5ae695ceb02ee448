//! The Library gRPC service over a [`keepsake_library::Cloud`], and the helpers it shares
//! with the Accounts service (`accounts_service`).

use crate::ApiError;
use crate::auth::{Identity, identity};
use crate::convert::{
    MAX_CONTENT_HASHES, asset_to_wire, chunk_ids, clock_from_wire, commit_from_wire, id_bytes,
    page_to_wire, search_from_wire, version_to_wire,
};
use keepsake_library::{Cloud, LibraryError};
use keepsake_proto::v1 as pb;
use keepsake_proto::v1::library_server::Library;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Tells change-feed watchers that an account's feed moved.
#[derive(Clone)]
pub struct ChangeNotifier {
    tx: broadcast::Sender<Arc<str>>,
}

impl Default for ChangeNotifier {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(1024).0,
        }
    }
}

impl ChangeNotifier {
    /// `account`'s feed has new rows.
    pub fn notify(&self, account: &str) {
        let _ = self.tx.send(Arc::from(account));
    }

    /// Every feed may have new rows (after maintenance).
    pub fn notify_all(&self) {
        let _ = self.tx.send(Arc::from(""));
    }
}

/// Chunk ids one ReportCorruptChunks may name.
pub(crate) const REPORT_MAX_IDS: usize = 64;

/// Runs blocking cloud work off the async threads, for a caller whose device (if
/// the token names one) is still enrolled.
pub(crate) async fn run<T, F>(cloud: &Arc<Cloud>, who: Option<&Identity>, f: F) -> Result<T, Status>
where
    F: FnOnce(&Cloud) -> Result<T, LibraryError> + Send + 'static,
    T: Send + 'static,
{
    let cloud = cloud.clone();
    let device = who.and_then(|w| w.device.clone().map(|d| (w.account.clone(), d)));
    keepsake_store::offload(move || {
        // Access tokens outlive a revocation by at most their lifetime; the library
        // itself knows at once, so a revoked device hears DEVICE_REVOKED at its next call.
        if let Some((account, device)) = device {
            cloud.library().check_device(&account, &device)?;
        }
        f(&cloud)
    })
    .await
    .map_err(|e| Status::from(ApiError::Unavailable(format!("library worker failed: {e}"))))?
    .map_err(|e| Status::from(ApiError::Library(e)))
}

/// The account a call about devices acts on: the caller's own (`asked` empty or naming
/// it), or any account for an administrator.
pub(crate) fn owner_or_admin(who: &Identity, asked: String) -> Result<String, Status> {
    if asked.is_empty() || asked == who.account {
        Ok(who.account.clone())
    } else {
        require_admin(who)?;
        Ok(asked)
    }
}

pub(crate) fn require_admin(who: &Identity) -> Result<(), Status> {
    if who.admin {
        Ok(())
    } else {
        Err(ApiError::PermissionDenied("only an administrator may do this".into()).into())
    }
}

/// The name a commit or change records for the caller's device.
fn device_of(who: &Identity) -> String {
    who.device.clone().unwrap_or_else(|| "account".into())
}

/// Serves the library and its change feed.
#[derive(Clone)]
pub struct LibraryService {
    cloud: Arc<Cloud>,
    changes: ChangeNotifier,
    watch_poll: Duration,
}

impl LibraryService {
    /// Serves `cloud`; watchers also re-read the feed every `watch_poll` in case a
    /// change came from outside this process.
    pub fn new(cloud: Arc<Cloud>, changes: ChangeNotifier, watch_poll: Duration) -> Self {
        Self {
            cloud,
            changes,
            watch_poll,
        }
    }

    async fn mutate<T, F>(&self, who: &Identity, f: F) -> Result<T, Status>
    where
        F: FnOnce(&Cloud) -> Result<T, LibraryError> + Send + 'static,
        T: Send + 'static,
    {
        let out = run(&self.cloud, Some(who), f).await;
        if out.is_ok() {
            self.changes.notify(&who.account);
        }
        out
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A page size as asked: 0 (proto3's "not set") means the default of 1,000; the library
/// caps any larger one.
fn page_or_default(page_size: u32) -> usize {
    if page_size == 0 {
        1000
    } else {
        page_size as usize
    }
}

/// Where a password came from, for the sign-in throttle (a call without a peer address —
/// an in-process channel — counts as the server's own).
pub(crate) fn sign_in_from(peer: &Option<std::net::SocketAddr>) -> keepsake_library::SignInFrom {
    match peer {
        Some(addr) => keepsake_library::SignInFrom::Address(addr.ip()),
        None => keepsake_library::SignInFrom::Local,
    }
}

#[tonic::async_trait]
impl Library for LibraryService {
    async fn begin_upload(
        &self,
        request: Request<pb::BeginUploadRequest>,
    ) -> Result<Response<pb::BeginUploadResponse>, Status> {
        let who = identity(&request)?;
        let pb::BeginUploadRequest { bytes, request_id } = request.into_inner();
        let (account, device) = (who.account.clone(), who.device.clone());
        let r = run(&self.cloud, Some(&who), move |c| {
            c.begin_upload_for(
                &account,
                device.as_deref(),
                bytes,
                (!request_id.is_empty()).then_some(&*request_id),
            )
        })
        .await?;
        Ok(Response::new(pb::BeginUploadResponse {
            reservation_id: r.reservation_id,
            bytes: r.bytes,
            expires_at_ms: r.expires_at,
        }))
    }

    async fn renew_upload(
        &self,
        request: Request<pb::RenewUploadRequest>,
    ) -> Result<Response<pb::RenewUploadResponse>, Status> {
        let who = identity(&request)?;
        let pb::RenewUploadRequest { reservation_id } = request.into_inner();
        let account = who.account.clone();
        let r = run(&self.cloud, Some(&who), move |c| {
            c.renew_upload(&account, &reservation_id)
        })
        .await?;
        Ok(Response::new(pb::RenewUploadResponse {
            expires_at_ms: r.expires_at,
        }))
    }

    async fn end_upload(
        &self,
        request: Request<pb::EndUploadRequest>,
    ) -> Result<Response<pb::EndUploadResponse>, Status> {
        let who = identity(&request)?;
        let pb::EndUploadRequest { reservation_id } = request.into_inner();
        let account = who.account.clone();
        run(&self.cloud, Some(&who), move |c| {
            c.end_upload(&account, &reservation_id)
        })
        .await?;
        Ok(Response::new(pb::EndUploadResponse {}))
    }

    async fn commit_asset(
        &self,
        request: Request<pb::CommitAssetRequest>,
    ) -> Result<Response<pb::CommitAssetResponse>, Status> {
        let who = identity(&request)?;
        let commit = commit_from_wire(request.into_inner(), device_of(&who))?;
        let account = who.account.clone();
        // Paired events let an operator (and `cargo xtask it`) see a commit that a crash
        // interrupted: a begin with no answer.
        let request_id = commit.request_id.clone();
        let device = who.device.as_deref().unwrap_or("");
        tracing::debug!(account, device, request_id, "commit begins");
        let result = self
            .mutate(&who, move |c| c.commit_asset(&account, &commit))
            .await;
        tracing::debug!(account = %who.account, device, request_id, ok = result.is_ok(), "commit answered");
        let c = result?;
        Ok(Response::new(pb::CommitAssetResponse {
            asset_id: c.asset_id,
            version: c.version,
            conflict: c.conflict,
            deduplicated: c.deduplicated,
            path: c.path,
        }))
    }

    async fn find_assets_by_content(
        &self,
        request: Request<pb::FindAssetsByContentRequest>,
    ) -> Result<Response<pb::FindAssetsByContentResponse>, Status> {
        let who = identity(&request)?;
        let pb::FindAssetsByContentRequest { file_hashes } = request.into_inner();
        let hashes = chunk_ids("file_hashes", &file_hashes, MAX_CONTENT_HASHES)?;
        let account = who.account.clone();
        let found = run(&self.cloud, Some(&who), move |c| {
            c.library().find_by_content(&account, &hashes)
        })
        .await?;
        let matches = found
            .into_iter()
            .map(|m| pb::ContentMatch {
                file_hash: id_bytes(&m.file_hash),
                assets: m.assets.into_iter().map(asset_to_wire).collect(),
                purged_at_ms: m.purged_at,
                purged_paths: m.purged_paths,
            })
            .collect();
        Ok(Response::new(pb::FindAssetsByContentResponse { matches }))
    }

    async fn get_asset(
        &self,
        request: Request<pb::GetAssetRequest>,
    ) -> Result<Response<pb::GetAssetResponse>, Status> {
        let who = identity(&request)?;
        let pb::GetAssetRequest { asset_id } = request.into_inner();
        let account = who.account.clone();
        let asset = run(&self.cloud, Some(&who), move |c| {
            c.library().get_asset(&account, &asset_id)
        })
        .await?;
        Ok(Response::new(pb::GetAssetResponse {
            asset: Some(asset_to_wire(asset)),
        }))
    }

    async fn list_versions(
        &self,
        request: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<pb::ListVersionsResponse>, Status> {
        let who = identity(&request)?;
        let pb::ListVersionsRequest { asset_id } = request.into_inner();
        let account = who.account.clone();
        let versions = run(&self.cloud, Some(&who), move |c| {
            c.library().list_versions(&account, &asset_id)
        })
        .await?;
        Ok(Response::new(pb::ListVersionsResponse {
            versions: versions.into_iter().map(version_to_wire).collect(),
        }))
    }

    async fn list_folders(
        &self,
        request: Request<pb::ListFoldersRequest>,
    ) -> Result<Response<pb::ListFoldersResponse>, Status> {
        let who = identity(&request)?;
        let pb::ListFoldersRequest {} = request.into_inner();
        let account = who.account.clone();
        let folders = run(&self.cloud, Some(&who), move |c| {
            c.library().list_folders(&account)
        })
        .await?;
        Ok(Response::new(pb::ListFoldersResponse {
            folders: folders
                .into_iter()
                .map(|keepsake_library::Folder { path, assets }| pb::Folder { path, assets })
                .collect(),
        }))
    }

    async fn list_albums(
        &self,
        request: Request<pb::ListAlbumsRequest>,
    ) -> Result<Response<pb::ListAlbumsResponse>, Status> {
        let who = identity(&request)?;
        let pb::ListAlbumsRequest {} = request.into_inner();
        let account = who.account.clone();
        let albums = run(&self.cloud, Some(&who), move |c| {
            c.library().list_albums(&account)
        })
        .await?;
        Ok(Response::new(pb::ListAlbumsResponse {
            albums: albums
                .into_iter()
                .map(
                    |keepsake_library::AlbumSummary {
                         album_id,
                         name,
                         assets,
                         cover,
                     }| pb::AlbumSummary {
                        album_id,
                        name,
                        assets,
                        cover_asset_id: cover.unwrap_or_default(),
                    },
                )
                .collect(),
        }))
    }

    async fn search_assets(
        &self,
        request: Request<pb::SearchAssetsRequest>,
    ) -> Result<Response<pb::SearchAssetsResponse>, Status> {
        let who = identity(&request)?;
        let (query, size, page) = search_from_wire(request.into_inner())?;
        let account = who.account.clone();
        let found = run(&self.cloud, Some(&who), move |c| {
            c.library().search(&account, &query, page.as_deref(), size)
        })
        .await?;
        Ok(Response::new(pb::SearchAssetsResponse {
            assets: found.assets.into_iter().map(asset_to_wire).collect(),
            next_page: found.next.unwrap_or_default(),
        }))
    }

    async fn revert_asset(
        &self,
        request: Request<pb::RevertAssetRequest>,
    ) -> Result<Response<pb::RevertAssetResponse>, Status> {
        let who = identity(&request)?;
        let pb::RevertAssetRequest {
            asset_id,
            version,
            request_id,
        } = request.into_inner();
        if request_id.is_empty() || request_id.len() > 128 {
            return Err(
                ApiError::field("request_id", "1..=128 bytes, chosen by the client").into(),
            );
        }
        let account = who.account.clone();
        let device = device_of(&who);
        let c = self
            .mutate(&who, move |c| {
                c.revert(&account, &asset_id, version, &request_id, &device)
            })
            .await?;
        Ok(Response::new(pb::RevertAssetResponse {
            version: c.version,
            seq: c.seq,
        }))
    }

    async fn set_metadata(
        &self,
        request: Request<pb::SetMetadataRequest>,
    ) -> Result<Response<pb::SetMetadataResponse>, Status> {
        let who = identity(&request)?;
        let pb::SetMetadataRequest {
            asset_id,
            clock,
            field,
        } = request.into_inner();
        let clock = clock_from_wire(clock)?;
        let field = crate::convert::metadata_field_from_wire(field)?;
        let account = who.account.clone();
        let applied = self
            .mutate(&who, move |c| {
                c.library()
                    .set_metadata(&account, &asset_id, &field, &clock)
            })
            .await?;
        Ok(Response::new(pb::SetMetadataResponse { applied }))
    }

    async fn apply_edits(
        &self,
        request: Request<pb::ApplyEditsRequest>,
    ) -> Result<Response<pb::ApplyEditsResponse>, Status> {
        let who = identity(&request)?;
        let pb::ApplyEditsRequest { edits } = request.into_inner();
        if edits.len() > keepsake_library::MAX_EDITS_PER_CALL {
            return Err(ApiError::field(
                "edits",
                format!(
                    "at most {} edits in one call",
                    keepsake_library::MAX_EDITS_PER_CALL
                ),
            )
            .into());
        }
        // A malformed edit is refused on its own, like a refused one; the rest still go.
        let mut malformed: Vec<Option<ApiError>> = Vec::with_capacity(edits.len());
        let mut valid = Vec::with_capacity(edits.len());
        for edit in edits {
            match crate::convert::edit_from_wire(edit) {
                Ok(edit) => {
                    valid.push(edit);
                    malformed.push(None);
                }
                Err(e) => malformed.push(Some(e)),
            }
        }
        let account = who.account.clone();
        let mut answers = self
            .mutate(&who, move |c| c.library().apply_edits(&account, &valid))
            .await?
            .into_iter();
        let outcomes = malformed
            .into_iter()
            .map(|bad| {
                let answer = match bad {
                    Some(e) => Err(e),
                    None => match answers.next() {
                        Some(answer) => answer.map_err(ApiError::from),
                        None => Err(ApiError::Unavailable("an edit went unanswered".into())),
                    },
                };
                match answer {
                    Ok(applied) => pb::EditOutcome {
                        applied,
                        ..Default::default()
                    },
                    Err(e) => {
                        let status = crate::error::to_status(&e);
                        pb::EditOutcome {
                            applied: false,
                            reason: crate::error::reason_of(&status).unwrap_or_default(),
                            message: status.message().to_string(),
                        }
                    }
                }
            })
            .collect();
        Ok(Response::new(pb::ApplyEditsResponse { outcomes }))
    }

    async fn put_album(
        &self,
        request: Request<pb::PutAlbumRequest>,
    ) -> Result<Response<pb::PutAlbumResponse>, Status> {
        let who = identity(&request)?;
        let pb::PutAlbumRequest {
            album_id,
            name,
            clock,
        } = request.into_inner();
        let clock = clock_from_wire(clock)?;
        let account = who.account.clone();
        let applied = self
            .mutate(&who, move |c| {
                c.library().put_album(&account, &album_id, &name, &clock)
            })
            .await?;
        Ok(Response::new(pb::PutAlbumResponse { applied }))
    }

    async fn delete_album(
        &self,
        request: Request<pb::DeleteAlbumRequest>,
    ) -> Result<Response<pb::DeleteAlbumResponse>, Status> {
        let who = identity(&request)?;
        let pb::DeleteAlbumRequest { album_id, clock } = request.into_inner();
        let clock = clock_from_wire(clock)?;
        let account = who.account.clone();
        self.mutate(&who, move |c| {
            c.library().delete_album(&account, &album_id, &clock)
        })
        .await?;
        Ok(Response::new(pb::DeleteAlbumResponse {}))
    }

    async fn set_album_member(
        &self,
        request: Request<pb::SetAlbumMemberRequest>,
    ) -> Result<Response<pb::SetAlbumMemberResponse>, Status> {
        let who = identity(&request)?;
        let pb::SetAlbumMemberRequest {
            album_id,
            asset_id,
            present,
            clock,
        } = request.into_inner();
        let clock = clock_from_wire(clock)?;
        let account = who.account.clone();
        let applied = self
            .mutate(&who, move |c| {
                c.library()
                    .set_member(&account, &album_id, &asset_id, present, &clock)
            })
            .await?;
        Ok(Response::new(pb::SetAlbumMemberResponse { applied }))
    }

    async fn trash_asset(
        &self,
        request: Request<pb::TrashAssetRequest>,
    ) -> Result<Response<pb::TrashAssetResponse>, Status> {
        let who = identity(&request)?;
        let pb::TrashAssetRequest { asset_id, alone } = request.into_inner();
        let account = who.account.clone();
        self.mutate(&who, move |c| {
            if alone {
                c.library().trash_alone(&account, &asset_id)
            } else {
                c.library().trash(&account, &asset_id)
            }
        })
        .await?;
        Ok(Response::new(pb::TrashAssetResponse {}))
    }

    async fn restore_asset(
        &self,
        request: Request<pb::RestoreAssetRequest>,
    ) -> Result<Response<pb::RestoreAssetResponse>, Status> {
        let who = identity(&request)?;
        let pb::RestoreAssetRequest { asset_id } = request.into_inner();
        let account = who.account.clone();
        self.mutate(&who, move |c| c.library().restore(&account, &asset_id))
            .await?;
        Ok(Response::new(pb::RestoreAssetResponse {}))
    }

    async fn rename_asset(
        &self,
        request: Request<pb::RenameAssetRequest>,
    ) -> Result<Response<pb::RenameAssetResponse>, Status> {
        let who = identity(&request)?;
        let pb::RenameAssetRequest {
            asset_id,
            path,
            clock,
        } = request.into_inner();
        let path = crate::convert::path_from_wire(path)?;
        let clock = clock_from_wire(clock)?;
        let account = who.account.clone();
        let applied = self
            .mutate(&who, move |c| {
                c.library().rename(&account, &asset_id, &path, &clock)
            })
            .await?;
        Ok(Response::new(pb::RenameAssetResponse { applied }))
    }

    async fn list_duplicates(
        &self,
        request: Request<pb::ListDuplicatesRequest>,
    ) -> Result<Response<pb::ListDuplicatesResponse>, Status> {
        let who = identity(&request)?;
        let pb::ListDuplicatesRequest { limit } = request.into_inner();
        let limit = match limit {
            0 => 100,
            n if n > 1000 => return Err(ApiError::field("limit", "must be at most 1000").into()),
            n => n as usize,
        };
        let account = who.account.clone();
        let groups = run(&self.cloud, Some(&who), move |c| {
            c.library().duplicates(&account, limit)
        })
        .await?;
        Ok(Response::new(pb::ListDuplicatesResponse {
            groups: groups
                .into_iter()
                .map(|(hash, assets)| pb::DuplicateGroup {
                    file_hash: id_bytes(&hash),
                    assets: assets.into_iter().map(asset_to_wire).collect(),
                })
                .collect(),
        }))
    }

    async fn purge_asset(
        &self,
        request: Request<pb::PurgeAssetRequest>,
    ) -> Result<Response<pb::PurgeAssetResponse>, Status> {
        let who = identity(&request)?;
        let pb::PurgeAssetRequest { asset_id } = request.into_inner();
        let account = who.account.clone();
        self.mutate(&who, move |c| c.purge(&account, &asset_id))
            .await?;
        Ok(Response::new(pb::PurgeAssetResponse {}))
    }

    async fn list_changes(
        &self,
        request: Request<pb::ListChangesRequest>,
    ) -> Result<Response<pb::ListChangesResponse>, Status> {
        let who = identity(&request)?;
        let pb::ListChangesRequest { cursor, page_size } = request.into_inner();
        let account = who.account.clone();
        let page = run(&self.cloud, Some(&who), move |c| {
            c.library()
                .list_changes(&account, cursor, page_or_default(page_size))
        })
        .await?;
        Ok(Response::new(page_to_wire(page)))
    }

    async fn scrub_library(
        &self,
        request: Request<pb::ScrubLibraryRequest>,
    ) -> Result<Response<pb::ScrubLibraryResponse>, Status> {
        let who = identity(&request)?;
        require_admin(&who)?;
        let pb::ScrubLibraryRequest {} = request.into_inner();
        let report = run(&self.cloud, Some(&who), |c| c.scrub()).await?;
        if !report.damaged.is_empty() {
            // Devices learn of the flags through the feed, at once.
            self.changes.notify_all();
        }
        Ok(Response::new(crate::convert::library_scrub_to_wire(report)))
    }

    async fn report_corrupt_chunks(
        &self,
        request: Request<pb::ReportCorruptChunksRequest>,
    ) -> Result<Response<pb::ReportCorruptChunksResponse>, Status> {
        let who = identity(&request)?;
        let pb::ReportCorruptChunksRequest { ids } = request.into_inner();
        // Each id costs the server a read and a hash: a device reports the few a download
        // met, never a flood that would have the server hash its disk for 32 bytes an id.
        let ids = crate::wire::chunk_ids("ids", &ids, REPORT_MAX_IDS)?;
        let account = who.account.clone();
        let (corrupt, damaged) = run(&self.cloud, Some(&who), move |c| {
            c.report_corrupt(&account, &ids)
        })
        .await?;
        if !damaged.is_empty() {
            // Devices learn of the flags through the feed, at once.
            self.changes.notify_all();
        }
        let mine = damaged.iter().filter(|d| d.account == who.account).count();
        Ok(Response::new(pb::ReportCorruptChunksResponse {
            confirmed: u32::try_from(corrupt.len()).unwrap_or(u32::MAX),
            assets_damaged: u32::try_from(mine).unwrap_or(u32::MAX),
        }))
    }

    type WatchChangesStream = BoxStream<pb::ListChangesResponse>;

    async fn watch_changes(
        &self,
        request: Request<pb::WatchChangesRequest>,
    ) -> Result<Response<Self::WatchChangesStream>, Status> {
        let who = identity(&request)?;
        let pb::WatchChangesRequest {
            mut cursor,
            from_now,
        } = request.into_inner();
        // Subscribed before the first read, so no commit can fall between the two.
        let mut notified = self.changes.tx.subscribe();
        if from_now {
            let account = who.account.clone();
            cursor = run(&self.cloud, Some(&who), move |c| {
                c.library().head_cursor(&account)
            })
            .await?;
        }
        let (tx, rx) = mpsc::channel(4);
        let cloud = self.cloud.clone();
        let poll = self.watch_poll;
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let account = who.account.clone();
                let page = run(&cloud, Some(&who), move |c| {
                    c.library().list_changes(&account, cursor, usize::MAX)
                })
                .await;
                match page {
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    Ok(page) => {
                        let (more, empty) = (page.more, page.changes.is_empty());
                        cursor = page.cursor;
                        if (first || !empty) && tx.send(Ok(page_to_wire(page))).await.is_err() {
                            return;
                        }
                        first = false;
                        if more {
                            continue;
                        }
                    }
                }
                loop {
                    tokio::select! {
                        msg = notified.recv() => match msg {
                            Ok(a) if a.is_empty() || *a == *who.account => break,
                            Ok(_) => continue,
                            Err(broadcast::error::RecvError::Lagged(_)) => break,
                            Err(broadcast::error::RecvError::Closed) => return,
                        },
                        _ = tokio::time::sleep(poll) => break,
                        _ = tx.closed() => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
