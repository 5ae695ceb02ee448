//! The DeviceControl gRPC service: local control of a running agent, over its
//! [`FolderControl`]. Loopback only; no tokens (whoever reaches it is on the device).

use crate::ApiError;
use crate::client::pb;
use keepsake_device::{
    AgentStatus, Conditions, Edit, FolderControl, Hlc, MAX_IMPORT_BYTES, Progress, Settings,
    SkippedFile,
};
use keepsake_proto::v1::device_control_server::{DeviceControl, DeviceControlServer};
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

/// Serves one agent's control.
pub struct DeviceService {
    control: Arc<FolderControl>,
}

fn refused(e: keepsake_device::DeviceError) -> Status {
    ApiError::from(e).into()
}

fn status_to_wire(s: AgentStatus) -> pb::AgentStatus {
    let AgentStatus {
        device_id,
        last_pass_ms,
        reason,
        since_ms,
        pending_files,
        uploaded,
        downloaded,
        last_error,
        last_stall_ms,
        pending_edits,
        progress,
        originals_bytes,
        previews_bytes,
        cloud_only,
        optimize_budget,
        skipped,
        damaged_waiting,
        ignored,
        numbered,
        passes,
        reason_message,
        folder,
        reason_fix,
        pending_bytes,
        pending_downloads,
        pending_download_bytes,
    } = s;
    pb::AgentStatus {
        device_id,
        last_pass_ms,
        reason: reason.unwrap_or_default(),
        since_ms,
        pending_files,
        uploaded,
        downloaded,
        last_error: last_error.unwrap_or_default(),
        last_stall_ms,
        pending_edits,
        progress: progress.map(progress_to_wire),
        originals_bytes,
        previews_bytes,
        cloud_only,
        optimize_budget,
        skipped: skipped.into_iter().map(skipped_to_wire).collect(),
        damaged_waiting,
        ignored,
        numbered: numbered
            .into_iter()
            .map(|(here, library)| pb::NumberedName { here, library })
            .collect(),
        passes,
        reason_message: reason_message.unwrap_or_default(),
        folder: folder.unwrap_or_default(),
        reason_fix: reason_fix.unwrap_or_default(),
        pending_bytes,
        pending_downloads,
        pending_download_bytes,
    }
}

fn skipped_to_wire(f: SkippedFile) -> pb::SkippedFile {
    let SkippedFile {
        path,
        reason,
        message,
    } = f;
    pb::SkippedFile {
        path,
        reason,
        message,
    }
}

fn progress_to_wire(p: Progress) -> pb::Progress {
    let Progress {
        phase,
        items_done,
        items_total,
        bytes_done,
        bytes_total,
        current,
    } = p;
    pb::Progress {
        phase,
        items_done,
        items_total,
        bytes_done,
        bytes_total,
        current: current.unwrap_or_default(),
    }
}

fn settings_to_wire(s: Settings) -> pb::Settings {
    let Settings {
        sync_enabled,
        cellular_allowed,
        unlimited_updates,
        daily_cap_bytes,
        paused_until_ms,
        power_override_until_ms,
        optimize_budget_bytes,
        limit_upload_bytes,
        limit_download_bytes,
    } = s;
    pb::Settings {
        sync_enabled,
        cellular_allowed,
        unlimited_updates,
        daily_cap_bytes,
        paused_until_ms,
        power_override_until_ms,
        optimize_budget_bytes,
        limit_upload_bytes,
        limit_download_bytes,
    }
}

fn settings_from_wire(s: Option<pb::Settings>) -> Result<Settings, Status> {
    let pb::Settings {
        sync_enabled,
        cellular_allowed,
        unlimited_updates,
        daily_cap_bytes,
        paused_until_ms,
        power_override_until_ms,
        optimize_budget_bytes,
        limit_upload_bytes,
        limit_download_bytes,
    } = s.ok_or_else(|| Status::from(ApiError::field("settings", "is required")))?;
    let limit = |field: &'static str, rate: Option<u64>| match rate {
        Some(r) if r < crate::throttle::MIN_LIMIT => Err(Status::from(ApiError::field(
            field,
            format!("at least {} bytes a second", crate::throttle::MIN_LIMIT),
        ))),
        other => Ok(other),
    };
    Ok(Settings {
        sync_enabled,
        cellular_allowed,
        unlimited_updates,
        daily_cap_bytes,
        paused_until_ms,
        power_override_until_ms,
        optimize_budget_bytes,
        limit_upload_bytes: limit("settings.limit_upload_bytes", limit_upload_bytes)?,
        limit_download_bytes: limit("settings.limit_download_bytes", limit_download_bytes)?,
    })
}

fn edited(stamp: Hlc) -> Response<pb::EditResponse> {
    Response::new(pb::EditResponse {
        wall_ms: stamp.wall_ms,
        counter: stamp.counter,
    })
}

impl DeviceService {
    /// Queues an edit on the device (a journal write: off the async threads).
    async fn edit(&self, edit: Edit) -> Result<Response<pb::EditResponse>, Status> {
        let control = self.control.clone();
        keepsake_store::offload(move || control.edit(edit))
            .await
            .map_err(|e| Status::from(ApiError::Unavailable(e.to_string())))?
            .map(edited)
            .map_err(refused)
    }
}

fn conditions_from_wire(c: Option<pb::Conditions>) -> Result<Conditions, Status> {
    let pb::Conditions {
        network,
        battery_percent,
        charging,
        low_power,
        free_bytes,
        metered,
    } = c.ok_or_else(|| Status::from(ApiError::field("conditions", "is required")))?;
    if !["", "wifi", "wired", "cellular", "offline"].contains(&network.as_str()) {
        return Err(ApiError::field(
            "conditions.network",
            "must be wifi, wired, cellular or offline",
        )
        .into());
    }
    let battery_percent = battery_percent
        .map(|b| u8::try_from(b).ok().filter(|b| *b <= 100))
        .map(|b| {
            b.ok_or_else(|| {
                Status::from(ApiError::field(
                    "conditions.battery_percent",
                    "must be 0..=100",
                ))
            })
        })
        .transpose()?;
    Ok(Conditions {
        network: (!network.is_empty()).then_some(network),
        battery_percent,
        charging,
        low_power,
        free_bytes,
        metered,
    })
}

#[tonic::async_trait]
impl DeviceControl for DeviceService {
    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let pb::GetStatusRequest {} = request.into_inner();
        Ok(Response::new(pb::GetStatusResponse {
            status: Some(status_to_wire(self.control.status())),
        }))
    }

    async fn set_conditions(
        &self,
        request: Request<pb::SetConditionsRequest>,
    ) -> Result<Response<pb::SetConditionsResponse>, Status> {
        let pb::SetConditionsRequest { conditions } = request.into_inner();
        let conditions = conditions_from_wire(conditions)?;
        self.control.set_conditions(&conditions).map_err(refused)?;
        Ok(Response::new(pb::SetConditionsResponse {}))
    }

    async fn import(
        &self,
        request: Request<pb::ImportRequest>,
    ) -> Result<Response<pb::ImportResponse>, Status> {
        let pb::ImportRequest { name, data } = request.into_inner();
        let control = self.control.clone();
        let stored_as = keepsake_store::offload(move || control.import(&name, &data))
            .await
            .map_err(|e| Status::from(ApiError::Unavailable(e.to_string())))?
            .map_err(refused)?;
        Ok(Response::new(pb::ImportResponse { stored_as }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let pb::DeleteRequest { name } = request.into_inner();
        self.control.delete(&name).map_err(refused)?;
        Ok(Response::new(pb::DeleteResponse {}))
    }

    async fn get_settings(
        &self,
        request: Request<pb::GetSettingsRequest>,
    ) -> Result<Response<pb::GetSettingsResponse>, Status> {
        let pb::GetSettingsRequest {} = request.into_inner();
        let settings = self.control.settings().map_err(refused)?;
        Ok(Response::new(pb::GetSettingsResponse {
            settings: Some(settings_to_wire(settings)),
        }))
    }

    async fn set_settings(
        &self,
        request: Request<pb::SetSettingsRequest>,
    ) -> Result<Response<pb::SetSettingsResponse>, Status> {
        let pb::SetSettingsRequest { settings } = request.into_inner();
        let settings = settings_from_wire(settings)?;
        self.control.set_settings(&settings).map_err(refused)?;
        Ok(Response::new(pb::SetSettingsResponse {}))
    }

    async fn list_assets(
        &self,
        request: Request<pb::ListAssetsRequest>,
    ) -> Result<Response<pb::ListAssetsResponse>, Status> {
        let pb::ListAssetsRequest {} = request.into_inner();
        let assets = self.control.assets().map_err(refused)?;
        let albums = self.control.albums().map_err(refused)?;
        Ok(Response::new(pb::ListAssetsResponse {
            assets: assets
                .into_iter()
                .map(|a| pb::LocalAsset {
                    asset_id: a.asset_id,
                    name: a.name,
                    trashed: a.trashed,
                    favorite: a.favorite,
                    hidden: a.hidden,
                    albums: a.albums,
                })
                .collect(),
            albums: albums
                .into_iter()
                .map(|a| pb::LocalAlbum {
                    album_id: a.album_id,
                    name: a.name,
                    members: a.members,
                })
                .collect(),
        }))
    }

    async fn set_favorite(
        &self,
        request: Request<pb::SetFavoriteRequest>,
    ) -> Result<Response<pb::EditResponse>, Status> {
        let pb::SetFavoriteRequest { asset_id, favorite } = request.into_inner();
        self.edit(Edit::Favorite {
            asset_id,
            value: favorite,
        })
        .await
    }

    async fn set_hidden(
        &self,
        request: Request<pb::SetHiddenRequest>,
    ) -> Result<Response<pb::EditResponse>, Status> {
        let pb::SetHiddenRequest { asset_id, hidden } = request.into_inner();
        self.edit(Edit::Hidden {
            asset_id,
            value: hidden,
        })
        .await
    }

    async fn put_album(
        &self,
        request: Request<pb::LocalPutAlbumRequest>,
    ) -> Result<Response<pb::EditResponse>, Status> {
        let pb::LocalPutAlbumRequest { album_id, name } = request.into_inner();
        self.edit(Edit::PutAlbum { album_id, name }).await
    }

    async fn delete_album(
        &self,
        request: Request<pb::LocalDeleteAlbumRequest>,
    ) -> Result<Response<pb::EditResponse>, Status> {
        let pb::LocalDeleteAlbumRequest { album_id } = request.into_inner();
        self.edit(Edit::DeleteAlbum { album_id }).await
    }

    async fn set_album_member(
        &self,
        request: Request<pb::LocalSetAlbumMemberRequest>,
    ) -> Result<Response<pb::EditResponse>, Status> {
        let pb::LocalSetAlbumMemberRequest {
            album_id,
            asset_id,
            present,
        } = request.into_inner();
        self.edit(Edit::AlbumMember {
            album_id,
            asset_id,
            present,
        })
        .await
    }

    async fn trash_asset(
        &self,
        request: Request<pb::LocalTrashAssetRequest>,
    ) -> Result<Response<pb::EditResponse>, Status> {
        let pb::LocalTrashAssetRequest { asset_id } = request.into_inner();
        self.edit(Edit::Trash {
            asset_id,
            alone: false,
        })
        .await
    }

    async fn restore_asset(
        &self,
        request: Request<pb::LocalRestoreAssetRequest>,
    ) -> Result<Response<pb::EditResponse>, Status> {
        let pb::LocalRestoreAssetRequest { asset_id } = request.into_inner();
        self.edit(Edit::Restore { asset_id }).await
    }

    async fn fetch_original(
        &self,
        request: Request<pb::FetchOriginalRequest>,
    ) -> Result<Response<pb::FetchOriginalResponse>, Status> {
        let pb::FetchOriginalRequest { asset_id } = request.into_inner();
        // The agent fetches it on its next pass; answer once it is in place.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let control = self.control.clone();
            let id = asset_id.clone();
            let here = keepsake_store::offload(move || control.open_original(&id))
                .await
                .map_err(|e| Status::from(ApiError::Unavailable(e.to_string())))?
                .map_err(refused)?;
            if let Some(path) = here {
                return Ok(Response::new(pb::FetchOriginalResponse {
                    path: path.to_string_lossy().into_owned(),
                }));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ApiError::Unavailable(
                    "the agent has not fetched it yet; is it syncing? (`keepsake status`)".into(),
                )
                .into());
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    async fn diagnose(
        &self,
        request: Request<pb::DiagnoseRequest>,
    ) -> Result<Response<pb::DiagnoseResponse>, Status> {
        let pb::DiagnoseRequest {} = request.into_inner();
        let d = self.control.diagnose().map_err(refused)?;
        Ok(Response::new(pb::DiagnoseResponse {
            syncing: d.syncing,
            text: d.text,
            json: d.json,
        }))
    }
}

/// The header carrying the DeviceControl secret.
pub const CONTROL_SECRET_HEADER: &str = "x-keepsake-control-secret";

/// Serves `control` on `listener` (which must be loopback) until `shutdown`, to callers
/// presenting the device's control secret.
pub async fn serve_device(
    listener: TcpListener,
    control: Arc<FolderControl>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let secret = control.control_secret().ok();
    let expected = secret.as_deref().map(|s| blake3::hash(s.as_bytes()));
    let service = DeviceControlServer::new(DeviceService { control })
        .max_decoding_message_size(MAX_IMPORT_BYTES + (1 << 20));
    // Only the device's owner can read the secret's file; anyone else on the machine who
    // reaches the port is refused (it once listed and deleted the owner's photos).
    let service = tonic::service::interceptor::InterceptedService::new(
        service,
        move |req: tonic::Request<()>| {
            let given = req
                .metadata()
                .get(CONTROL_SECRET_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(|s| blake3::hash(s.as_bytes()));
            match (&expected, given) {
                // Digests compared, so the comparison's time says nothing of the secret.
                (Some(want), Some(got)) if *want == got => Ok(req),
                _ => Err(Status::unauthenticated(format!(
                    "DeviceControl needs the secret in the device's data directory \
                     ({}), sent as {CONTROL_SECRET_HEADER}",
                    keepsake_device::CONTROL_SECRET
                ))),
            }
        },
    );
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
}
