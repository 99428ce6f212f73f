//! Remote adapters for `reco serve gateway`: the generated tonic clients wrapped so that they
//! implement the same server traits as the in-process services, so the request path cannot
//! tell `reco standalone` from a cluster.

use std::time::Duration;

use reco_proto::events_client::EventsClient;
use reco_proto::events_server::Events;
use reco_proto::features_client::FeaturesClient;
use reco_proto::features_server::Features;
use reco_proto::ranking_client::RankingClient;
use reco_proto::ranking_server::Ranking;
use reco_proto::retrieval_client::RetrievalClient;
use reco_proto::retrieval_server::Retrieval;
use reco_proto::{
    GetItemCountersRequest, GetItemCountersResponse, GetUserRequest, IngestRequest, IngestResponse, RankRequest,
    RankResponse, RetrieveRequest, RetrieveResponse, UserFeatures,
};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

/// Largest gRPC message decoded: a rank response of thousands of items with embeddings.
const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

/// Why an endpoint URL was refused.
#[derive(Debug, thiserror::Error)]
#[error("{url:?} is not a usable gRPC URL: {source}")]
pub struct RemoteError {
    pub url: String,
    source: tonic::transport::Error,
}

/// A channel that connects on first use (and reconnects), so the gateway starts and stays up
/// while a backend is not (yet) reachable; failed calls degrade instead.
pub fn lazy_channel(url: &str) -> Result<Channel, RemoteError> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|source| RemoteError { url: url.to_owned(), source })?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
}

/// Drops the incoming server-side metadata: only the message travels on.
fn forward<T>(request: Request<T>) -> Request<T> {
    Request::new(request.into_inner())
}

/// The features service over gRPC.
#[derive(Clone, Debug)]
pub struct RemoteFeatures(FeaturesClient<Channel>);

impl RemoteFeatures {
    pub fn new(channel: Channel) -> Self {
        Self(FeaturesClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES))
    }
}

#[tonic::async_trait]
impl Features for RemoteFeatures {
    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<UserFeatures>, Status> {
        self.0.clone().get_user(forward(request)).await
    }

    async fn get_item_counters(
        &self,
        request: Request<GetItemCountersRequest>,
    ) -> Result<Response<GetItemCountersResponse>, Status> {
        self.0.clone().get_item_counters(forward(request)).await
    }
}

/// The events service over gRPC.
#[derive(Clone, Debug)]
pub struct RemoteEvents(EventsClient<Channel>);

impl RemoteEvents {
    pub fn new(channel: Channel) -> Self {
        Self(EventsClient::new(channel))
    }
}

#[tonic::async_trait]
impl Events for RemoteEvents {
    async fn ingest(&self, request: Request<IngestRequest>) -> Result<Response<IngestResponse>, Status> {
        self.0.clone().ingest(forward(request)).await
    }
}

/// One version's retrieval service over gRPC.
#[derive(Clone, Debug)]
pub struct RemoteRetrieval(RetrievalClient<Channel>);

impl RemoteRetrieval {
    pub fn new(channel: Channel) -> Self {
        Self(RetrievalClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES))
    }
}

#[tonic::async_trait]
impl Retrieval for RemoteRetrieval {
    async fn retrieve(&self, request: Request<RetrieveRequest>) -> Result<Response<RetrieveResponse>, Status> {
        self.0.clone().retrieve(forward(request)).await
    }
}

/// One version's ranking service over gRPC.
#[derive(Clone, Debug)]
pub struct RemoteRanking(RankingClient<Channel>);

impl RemoteRanking {
    pub fn new(channel: Channel) -> Self {
        Self(
            RankingClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
    }
}

#[tonic::async_trait]
impl Ranking for RemoteRanking {
    async fn rank(&self, request: Request<RankRequest>) -> Result<Response<RankResponse>, Status> {
        self.0.clone().rank(forward(request)).await
    }
}
