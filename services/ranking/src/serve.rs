//! `reco serve ranking`: the flags and the gRPC routes.

use std::path::PathBuf;

use reco_proto::ranking_server::RankingServer;
use reco_runtime::flags::VersionFlags;

use crate::scorer::{DriftSettings, ScorerSettings};
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
    /// Sampled requests per feature-drift window: each closed window sets
    /// `reco_ranking_feature_psi` (0: no drift monitors).
    #[arg(long, env = "RECO_DRIFT_WINDOW_REQUESTS", default_value_t = DriftSettings::default().window_requests)]
    pub drift_window_requests: usize,
    /// The drift monitors count the rows of one request in this many.
    #[arg(long, env = "RECO_DRIFT_SAMPLE_EVERY", default_value_t = DriftSettings::default().sample_every, value_parser = clap::value_parser!(u32).range(1..))]
    pub drift_sample_every: u32,
}

impl RankingArgs {
    pub fn settings(&self) -> ScorerSettings {
        ScorerSettings {
            batch_size: self.batch_size as usize,
            value_weights: self.value_weights.clone(),
            torchscript: self.torchscript.clone(),
            drift: DriftSettings { window_requests: self.drift_window_requests, sample_every: self.drift_sample_every },
        }
    }
}

/// The gRPC service (`Ranking`) to serve with `reco_proto::serve`.
pub fn grpc_routes(service: RankingService) -> tonic::service::Routes {
    tonic::service::Routes::new(RankingServer::new(service))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RankingArgs,
    }

    fn parse(extra: &[&str]) -> Result<RankingArgs, clap::Error> {
        let base = ["reco-serve-ranking", "--pipeline=explore", "--model-version=v1", "--model-uri=/m/v1"];
        Cli::try_parse_from(base.iter().chain(extra)).map(|cli| cli.args)
    }

    #[test]
    fn the_drift_flags_default_to_the_settings_and_refuse_what_cannot_sample() {
        assert_eq!(parse(&[]).unwrap().settings().drift, DriftSettings::default());
        let off = parse(&["--drift-window-requests=0", "--drift-sample-every=1"]).unwrap().settings().drift;
        assert_eq!(off, DriftSettings { window_requests: 0, sample_every: 1 });
        for bad in [["--drift-sample-every=0"], ["--drift-window-requests=-1"], ["--drift-sample-every=often"]] {
            let error = parse(&bad).expect_err(bad[0]).to_string();
            assert!(error.contains(bad[0].split('=').next().unwrap()), "{bad:?}: {error}");
        }
    }
}
