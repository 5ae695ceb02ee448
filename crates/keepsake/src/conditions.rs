//! What the server said, read over gRPC, for the conditions the device crate builds
//! (`keepsake_device::conditions`): the account's plan and use, and the version it
//! requires when it refuses this one.

use anyhow::Result;
use keepsake_device::conditions::{Assumed, ServerSaid};
use keepsake_policy::{Quota, Snapshot, Version};
use keepsake_transport::{client, reason_of};
use std::path::Path;
use tonic_types::StatusExt;

/// The snapshot the policy judges now, from the one builder the agent and the doctor share.
pub(crate) fn snapshot(
    data: Option<&Path>,
    folder: &Path,
    account: Option<&str>,
    server: &ServerView,
    assumed: &Assumed,
) -> Result<Snapshot> {
    Ok(keepsake_device::conditions::snapshot(
        data,
        folder,
        account,
        &server.said(),
        assumed,
        crate::device_cli::now_ms(),
    )?)
}

/// What the server told us: whether it answered, the account (plan and exact usage),
/// and the minimum client version if it refused ours.
pub(crate) struct ServerView {
    pub reachable: bool,
    pub account: Option<client::pb::Account>,
    pub min_version: Option<Version>,
}

impl ServerView {
    /// Asks for the account; a refused client learns the version it must run instead.
    pub(crate) async fn ask_account(&mut self, accounts: &mut client::AccountsApi) {
        match accounts.get_account(client::pb::GetAccountRequest {}).await {
            Ok(reply) => self.account = reply.into_inner().account,
            Err(status) if reason_of(&status).as_deref() == Some("CLIENT_TOO_OLD") => {
                self.min_version = status
                    .get_details_error_info()
                    .and_then(|info| info.metadata.get("required_version")?.parse().ok());
            }
            Err(_) => {}
        }
    }

    /// What the policy weighs of it.
    pub(crate) fn said(&self) -> ServerSaid {
        ServerSaid {
            reachable: self.reachable,
            quota: self.quota(),
            min_version: self.min_version,
        }
    }

    /// The plan's limit against used and reserved bytes, if the account was read.
    pub(crate) fn quota(&self) -> Option<Quota> {
        let a = self.account.as_ref()?;
        // Reservations are holds for uploads in flight, not use: they never make a plan
        // look full (the refusal names them when they are what stands in the way).
        Some(Quota {
            used_bytes: a.used_bytes,
            limit_bytes: a.plan.as_ref()?.limit_bytes,
            pending_bytes: 0,
        })
    }
}
