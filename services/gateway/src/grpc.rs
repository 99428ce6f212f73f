//! The gateway's gRPC face (`reco.v1.Gateway`): the same request path as HTTP.

use reco_proto::gateway_server::Gateway as GatewayRpc;
use reco_proto::{RecommendRequest, RecommendResponse, RecordEventRequest, RecordEventResponse};
use tonic::{Request, Response, Status};

use crate::api::{EventError, EventInput, RecommendQuery};
use crate::gateway::Gateway;

/// Serves [`Gateway`] over gRPC; bad input is INVALID_ARGUMENT, a token that does not cover the
/// event PERMISSION_DENIED.
#[derive(Clone)]
pub struct GrpcGateway(pub Gateway);

#[tonic::async_trait]
impl GatewayRpc for GrpcGateway {
    async fn recommend(&self, request: Request<RecommendRequest>) -> Result<Response<RecommendResponse>, Status> {
        let query = RecommendQuery::from_proto(request.into_inner())
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        Ok(Response::new(self.0.recommend(query).await.into()))
    }

    async fn record_event(
        &self,
        request: Request<RecordEventRequest>,
    ) -> Result<Response<RecordEventResponse>, Status> {
        let input = EventInput::from_proto(request.into_inner())
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        self.0.record_event(input).await.map_err(|error| match error {
            EventError::Input(_) | EventError::Token(_) | EventError::Refused(_) => {
                Status::invalid_argument(error.to_string())
            }
            EventError::NotCovered { .. } => Status::permission_denied(error.to_string()),
            EventError::Unavailable(_) | EventError::DedupUnavailable(_) => Status::unavailable(error.to_string()),
        })?;
        Ok(Response::new(RecordEventResponse {}))
    }
}
