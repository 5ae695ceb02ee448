//! The DeviceControl gRPC service: local control of a running agent, over its
//! [`FolderControl`]. Loopback only; no tokens (whoever reaches it is on the device).

use crate::ApiError;
use crate::client::pb;
use keepsake_device::{AgentStatus, Conditions, DeviceError, FolderControl, MAX_IMPORT_BYTES};
use keepsake_proto::v1::device_control_server::{DeviceControl, DeviceControlServer};
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

/// Serves one agent's control.
pub struct DeviceService {
    control: Arc<FolderControl>,
}

fn refused(e: DeviceError) -> Status {
    match e {
        DeviceError::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
            Status::not_found(io.to_string())
        }
        DeviceError::Io(io) if io.kind() == std::io::ErrorKind::InvalidInput => {
            ApiError::field("name", io).into()
        }
        other => ApiError::Unavailable(other.to_string()).into(),
    }
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
    }
}

fn conditions_from_wire(c: Option<pb::Conditions>) -> Result<Conditions, Status> {
    let pb::Conditions {
        network,
        battery_percent,
        charging,
        low_power,
        free_bytes,
        cellular_allowed,
        sync_enabled,
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
        cellular_allowed,
        sync_enabled,
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
        let stored_as = tokio::task::spawn_blocking(move || control.import(&name, &data))
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
}

/// Serves `control` on `listener` (which must be loopback) until `shutdown`.
pub async fn serve_device(
    listener: TcpListener,
    control: Arc<FolderControl>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let service = DeviceControlServer::new(DeviceService { control })
        .max_decoding_message_size(MAX_IMPORT_BYTES + (1 << 20));
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
}
