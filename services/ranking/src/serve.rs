//! `reco serve ranking`: the flags, loading the version from them, and serving gRPC.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use reco_model::artifacts::{ArtifactError, VersionArtifacts, local_dir};
use reco_proto::ranking_server::RankingServer;

use crate::scorer::ScorerSettings;
use crate::service::RankingService;
use crate::weights::ValueWeights;

/// Flags of `reco serve ranking`; the operator's `version_deployment` passes `--pipeline
/// --model-version --model-uri --http --grpc --batch-size --value-weights`.
#[derive(clap::Args, Clone, Debug)]
pub struct RankingArgs {
    /// The RecommenderPipeline this service belongs to.
    #[arg(long)]
    pub pipeline: String,
    /// The model version served (echoed in every response).
    #[arg(long)]
    pub model_version: String,
    /// The version's artifact directory: `file:///abs/path` or a path.
    #[arg(long)]
    pub model_uri: String,
    /// Address of the HTTP server (/metrics, /healthz, /readyz).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub http: SocketAddr,
    /// Address of the gRPC server (Ranking).
    #[arg(long, default_value = "0.0.0.0:50051")]
    pub grpc: SocketAddr,
    /// At most this many candidates per ranker forward pass.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch_size: u32,
    /// Value-model weights, e.g. `click=1,like=0.5` (click = interaction, like = high_rating; see
    /// docs/ranking.md). Unnamed tasks keep the trained weights.
    #[arg(long, default_value = "")]
    pub value_weights: ValueWeights,
    /// A TorchScript ranker to score with instead of the version's native one.
    #[arg(long)]
    pub torchscript: Option<PathBuf>,
}

impl RankingArgs {
    pub fn settings(&self) -> ScorerSettings {
        ScorerSettings {
            batch_size: self.batch_size as usize,
            value_weights: self.value_weights.clone(),
            torchscript: self.torchscript.clone(),
        }
    }

    /// Loads the version named by `--model-uri` (on the blocking pool: it reads and checks files).
    /// The `Arc` is what `reco standalone` shares with retrieval.
    pub async fn load_artifacts(&self) -> Result<Arc<VersionArtifacts>, ArtifactError> {
        let dir = local_dir(&self.model_uri)?;
        let loaded = tokio::task::spawn_blocking(move || VersionArtifacts::load(&dir))
            .await
            .map_err(|e| ArtifactError::File { path: self.model_uri.clone().into(), message: e.to_string() })??;
        Ok(Arc::new(loaded))
    }
}

/// The gRPC service (`Ranking`) to serve with `reco_proto::serve`.
pub fn grpc_routes(service: RankingService) -> tonic::service::Routes {
    tonic::service::Routes::new(RankingServer::new(service))
}
