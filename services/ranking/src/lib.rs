//! reco-ranking: scores retrieved candidates for one model version (`reco.v1.Ranking`).
//!
//! A request's known candidates get the trainer's dense features ([`reco_model::scoring`]), go
//! through the version's multi-task ranker (native tch or TorchScript) in batches of at most
//! `--batch-size` rows, and are ordered by the served score of the trained [`ValueModel`]
//! (task weights overridable with `--value-weights`, see [`weights`]). See `docs/ranking.md`.
//!
//! [`ValueModel`]: reco_model::scoring::ValueModel

pub mod metrics;
pub mod scorer;
pub mod serve;
pub mod service;
pub mod weights;

pub use metrics::Metrics;
pub use scorer::{BuildError, DriftSettings, MAX_CANDIDATES, RankError, Ranked, Scorer, ScorerSettings, Skip};
pub use serve::{RankingArgs, grpc_routes};
pub use service::RankingService;
pub use weights::{TaskWeights, ValueWeights, WeightsError};
