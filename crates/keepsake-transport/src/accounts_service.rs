//! The Accounts gRPC service over a [`keepsake_library::Cloud`]: accounts, sign-in,
//! devices and tokens.

use crate::ApiError;
use crate::auth::{client_version, identity};
use crate::convert::{
    account_to_wire, device_to_wire, plan_to_wire, report_from_wire, token_to_wire,
};
use crate::library_service::{ChangeNotifier, owner_or_admin, require_admin, run, sign_in_from};
use keepsake_library::Cloud;
use keepsake_proto::v1 as pb;
use keepsake_proto::v1::accounts_server::Accounts;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Serves accounts, sign-in, devices and tokens.
#[derive(Clone)]
pub struct AccountsService {
    cloud: Arc<Cloud>,
    changes: ChangeNotifier,
}

impl AccountsService {
    /// Serves `cloud`'s accounts.
    pub fn new(cloud: Arc<Cloud>, changes: ChangeNotifier) -> Self {
        Self { cloud, changes }
    }
}

#[tonic::async_trait]
impl Accounts for AccountsService {
    async fn create_account(
        &self,
        request: Request<pb::CreateAccountRequest>,
    ) -> Result<Response<pb::CreateAccountResponse>, Status> {
        let who = identity(&request)?;
        require_admin(&who)?;
        let pb::CreateAccountRequest {
            account,
            password,
            plan,
            admin,
        } = request.into_inner();
        let info = run(&self.cloud, Some(&who), move |c| {
            c.create_account(
                &account,
                &password,
                (!plan.is_empty()).then_some(&*plan),
                admin,
            )
        })
        .await?;
        Ok(Response::new(pb::CreateAccountResponse {
            account: Some(account_to_wire(info)),
        }))
    }

    async fn sign_in(
        &self,
        request: Request<pb::SignInRequest>,
    ) -> Result<Response<pb::SignInResponse>, Status> {
        let request_from = request.remote_addr();
        let pb::SignInRequest { account, password } = request.into_inner();
        let from = sign_in_from(&request_from);
        let token = run(&self.cloud, None, move |c| {
            c.sign_in_from(&account, &password, from)
        })
        .await?;
        Ok(Response::new(pb::SignInResponse {
            access: Some(token_to_wire(token)),
        }))
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let who = identity(&request)?;
        let from = sign_in_from(&request.remote_addr());
        let pb::ChangePasswordRequest {
            old_password,
            new_password,
        } = request.into_inner();
        let account = who.account.clone();
        run(&self.cloud, Some(&who), move |c| {
            c.change_password_from(&account, &old_password, &new_password, from)
        })
        .await?;
        Ok(Response::new(pb::ChangePasswordResponse {}))
    }

    async fn delete_account(
        &self,
        request: Request<pb::DeleteAccountRequest>,
    ) -> Result<Response<pb::DeleteAccountResponse>, Status> {
        let who = identity(&request)?;
        let from = sign_in_from(&request.remote_addr());
        let pb::DeleteAccountRequest { password } = request.into_inner();
        let account = who.account.clone();
        run(&self.cloud, Some(&who), move |c| {
            c.delete_account_from(&account, &password, from)
        })
        .await?;
        self.changes.notify(&who.account);
        Ok(Response::new(pb::DeleteAccountResponse {}))
    }

    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::GetAccountResponse>, Status> {
        let who = identity(&request)?;
        let pb::GetAccountRequest {} = request.into_inner();
        let account = who.account.clone();
        let (info, plans, trash_retention_ms) = run(&self.cloud, Some(&who), move |c| {
            Ok((
                c.account_info(&account)?,
                c.library().plans().to_vec(),
                c.library().trash_retention_ms(),
            ))
        })
        .await?;
        Ok(Response::new(pb::GetAccountResponse {
            account: Some(account_to_wire(info)),
            plans: plans.into_iter().map(plan_to_wire).collect(),
            trash_retention_ms,
        }))
    }

    async fn set_plan(
        &self,
        request: Request<pb::SetPlanRequest>,
    ) -> Result<Response<pb::SetPlanResponse>, Status> {
        let who = identity(&request)?;
        require_admin(&who)?;
        let pb::SetPlanRequest { account, plan } = request.into_inner();
        run(&self.cloud, Some(&who), move |c| {
            c.library().set_plan(&account, &plan)
        })
        .await?;
        Ok(Response::new(pb::SetPlanResponse {}))
    }

    async fn enroll_device(
        &self,
        request: Request<pb::EnrollDeviceRequest>,
    ) -> Result<Response<pb::EnrollDeviceResponse>, Status> {
        let from = sign_in_from(&request.remote_addr());
        let pb::EnrollDeviceRequest {
            account,
            password,
            device_name,
            platform,
            client_version,
        } = request.into_inner();
        let e = run(&self.cloud, None, move |c| {
            c.enroll_device_from(
                &account,
                &password,
                &device_name,
                &platform,
                &client_version,
                from,
            )
        })
        .await?;
        Ok(Response::new(pb::EnrollDeviceResponse {
            device_id: e.device_id,
            device_token: e.device_token,
            access: Some(token_to_wire(e.access)),
        }))
    }

    async fn refresh_token(
        &self,
        request: Request<pb::RefreshTokenRequest>,
    ) -> Result<Response<pb::RefreshTokenResponse>, Status> {
        let header_version = client_version(&request);
        let pb::RefreshTokenRequest {
            device_id,
            device_token,
            client_version,
        } = request.into_inner();
        let version = if client_version.is_empty() {
            header_version.unwrap_or_default()
        } else {
            client_version
        };
        let token = run(&self.cloud, None, move |c| {
            c.refresh_token(&device_id, &device_token, &version)
        })
        .await?;
        Ok(Response::new(pb::RefreshTokenResponse {
            access: Some(token_to_wire(token)),
        }))
    }

    async fn revoke_device(
        &self,
        request: Request<pb::RevokeDeviceRequest>,
    ) -> Result<Response<pb::RevokeDeviceResponse>, Status> {
        let who = identity(&request)?;
        let pb::RevokeDeviceRequest { device_id, account } = request.into_inner();
        let account = owner_or_admin(&who, account)?;
        run(&self.cloud, Some(&who), move |c| {
            c.library().revoke_device(&account, &device_id)
        })
        .await?;
        Ok(Response::new(pb::RevokeDeviceResponse {}))
    }

    async fn remove_device(
        &self,
        request: Request<pb::RemoveDeviceRequest>,
    ) -> Result<Response<pb::RemoveDeviceResponse>, Status> {
        let who = identity(&request)?;
        let pb::RemoveDeviceRequest { device_id, account } = request.into_inner();
        let account = owner_or_admin(&who, account)?;
        run(&self.cloud, Some(&who), move |c| {
            c.library().remove_device(&account, &device_id)
        })
        .await?;
        Ok(Response::new(pb::RemoveDeviceResponse {}))
    }

    async fn list_accounts(
        &self,
        request: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        let who = identity(&request)?;
        require_admin(&who)?;
        let pb::ListAccountsRequest {} = request.into_inner();
        let accounts = run(&self.cloud, Some(&who), move |c| {
            c.library()
                .account_names()?
                .iter()
                .map(|name| c.account_info(name))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
        Ok(Response::new(pb::ListAccountsResponse {
            accounts: accounts.into_iter().map(account_to_wire).collect(),
        }))
    }

    async fn list_devices(
        &self,
        request: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        let who = identity(&request)?;
        let pb::ListDevicesRequest { account } = request.into_inner();
        let account = owner_or_admin(&who, account)?;
        let devices = run(&self.cloud, Some(&who), move |c| {
            c.library().list_devices(&account)
        })
        .await?;
        Ok(Response::new(pb::ListDevicesResponse {
            devices: devices.into_iter().map(device_to_wire).collect(),
        }))
    }

    async fn report_device_state(
        &self,
        request: Request<pb::ReportDeviceStateRequest>,
    ) -> Result<Response<pb::ReportDeviceStateResponse>, Status> {
        let who = identity(&request)?;
        let device = who.device.clone().ok_or_else(|| {
            ApiError::field(
                "authorization",
                "only a device's token can report its state",
            )
        })?;
        let pb::ReportDeviceStateRequest { state } = request.into_inner();
        let report = report_from_wire(state)?;
        let account = who.account.clone();
        run(&self.cloud, Some(&who), move |c| {
            c.library().report_device(&account, &device, &report)
        })
        .await?;
        Ok(Response::new(pb::ReportDeviceStateResponse {}))
    }

    async fn rotate_signing_key(
        &self,
        request: Request<pb::RotateSigningKeyRequest>,
    ) -> Result<Response<pb::RotateSigningKeyResponse>, Status> {
        let who = identity(&request)?;
        require_admin(&who)?;
        let key_id = run(&self.cloud, Some(&who), |c| c.rotate_signing_key()).await?;
        Ok(Response::new(pb::RotateSigningKeyResponse { key_id }))
    }
}
