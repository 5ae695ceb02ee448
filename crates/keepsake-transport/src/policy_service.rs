//! The Policy gRPC service: stateless evaluation of snapshots.

use crate::ApiError;
use crate::auth::identity;
use crate::convert::{WireSnapshot, decision_to_wire};
use keepsake_policy::doctor::{Unknowns, diagnose, render_json, render_text};
use keepsake_policy::{PolicyConfig, Snapshot, evaluate};
use keepsake_proto::v1 as pb;
use keepsake_proto::v1::policy_server::Policy;
use tonic::{Request, Response, Status};

/// Serves policy decisions with one configuration.
#[derive(Clone, Default)]
pub struct PolicyService {
    config: PolicyConfig,
}

impl PolicyService {
    /// Decides with `config`.
    pub fn new(config: PolicyConfig) -> Self {
        Self { config }
    }
}

fn snapshot_of(snapshot: Option<pb::Snapshot>) -> Result<Snapshot, Status> {
    let WireSnapshot(snapshot) = snapshot
        .ok_or_else(|| ApiError::field("snapshot", "is required"))?
        .try_into()?;
    Ok(snapshot)
}

#[tonic::async_trait]
impl Policy for PolicyService {
    async fn evaluate(
        &self,
        request: Request<pb::EvaluateRequest>,
    ) -> Result<Response<pb::EvaluateResponse>, Status> {
        identity(&request)?;
        let pb::EvaluateRequest { snapshot } = request.into_inner();
        let decision = evaluate(&snapshot_of(snapshot)?, &self.config);
        Ok(Response::new(pb::EvaluateResponse {
            decision: Some(decision_to_wire(&decision)),
        }))
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        identity(&request)?;
        let pb::ExplainRequest { snapshot } = request.into_inner();
        let snapshot = snapshot_of(snapshot)?;
        let decision = evaluate(&snapshot, &self.config);
        // A remote snapshot says what it knows; the device-only facts are its to send.
        let report = diagnose(&snapshot, &decision, &Unknowns::default());
        Ok(Response::new(pb::ExplainResponse {
            explanation: decision.explain(),
            checklist: render_text(&report),
            checklist_json: render_json(&report),
            syncing: report.syncing,
        }))
    }
}
