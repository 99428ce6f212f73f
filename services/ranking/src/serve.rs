//! `reco serve ranking`: the flags and the gRPC routes.

use std::path::PathBuf;

use reco_proto::ranking_server::RankingServer;
use reco_runtime::flags::VersionFlags;

use crate::scorer::ScorerSettings;
use crate::service::RankingService;
use crate::weights::ValueWeights;

/// Flags of `reco serve ranking`; the operator's `version_deployment` passes `--pipeline
/// --model-version --model-uri --http --grpc --batch-size --value-weights`.
#[derive(clap::Args, Clone, Debug)]
pub struct RankingArgs {
    #[command(flatten)]
    pub version: VersionFlags,
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
}

/// The gRPC service (`Ranking`) to serve with `reco_proto::serve`.
pub fn grpc_routes(service: RankingService) -> tonic::service::Routes {
    tonic::service::Routes::new(RankingServer::new(service))
}
