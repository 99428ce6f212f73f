//! The gRPC face: `reco.v1.Ranking/Rank` over a [`Scorer`], run on the blocking pool so that
//! forward passes never stall the async runtime.

use std::sync::Arc;
use std::time::Instant;

use reco_model::artifacts::VersionArtifacts;
use reco_proto::ranking_server::Ranking;
use reco_proto::{RankRequest, RankResponse};
use tonic::{Request, Response, Status};

use crate::metrics::Metrics;
use crate::scorer::{BuildError, RankError, Ranked, Scorer, ScorerSettings};

impl From<RankError> for Status {
    fn from(e: RankError) -> Self {
        match e {
            RankError::TooManyCandidates { .. }
            | RankError::EmbeddingDimension { .. }
            | RankError::EmbeddingNotFinite(_) => Status::invalid_argument(e.to_string()),
            RankError::Torch(_) | RankError::OutputShape { .. } => Status::internal(e.to_string()),
        }
    }
}

/// Ranking for one model version. Cheap to clone; `reco standalone` calls it in-process as an
/// `Arc<dyn Ranking>`, `reco serve ranking` behind tonic.
#[derive(Clone, Debug)]
pub struct RankingService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    scorer: Scorer,
    version: String,
    metrics: Metrics,
}

impl RankingService {
    /// A service scoring with `artifacts` (shared with retrieval in `reco standalone`).
    pub fn new(
        artifacts: Arc<VersionArtifacts>,
        version: impl Into<String>,
        settings: &ScorerSettings,
        metrics: Metrics,
    ) -> Result<Self, BuildError> {
        let scorer = Scorer::new(artifacts, settings)?;
        let version = version.into();
        let metrics = metrics.for_version(&version);
        Ok(RankingService { inner: Arc::new(Inner { scorer, version, metrics }) })
    }

    /// The model version this service answers for.
    pub fn version(&self) -> &str {
        &self.inner.version
    }

    /// The model's task names (the keys of `RankedItem.tasks`).
    pub fn tasks(&self) -> &[String] {
        self.inner.scorer.tasks()
    }

    async fn score(&self, req: RankRequest) -> Result<Ranked, Status> {
        let inner = self.inner.clone();
        let ranked = tokio::task::spawn_blocking(move || inner.scorer.rank(&req))
            .await
            .map_err(|e| Status::internal(format!("ranking task failed: {e}")))??;
        self.inner.metrics.observe(&ranked);
        Ok(ranked)
    }
}

#[tonic::async_trait]
impl Ranking for RankingService {
    async fn rank(&self, request: Request<RankRequest>) -> Result<Response<RankResponse>, Status> {
        let start = Instant::now();
        let result = self.score(request.into_inner()).await;
        let outcome = match &result {
            Ok(_) => "ok".to_owned(),
            Err(s) => format!("{:?}", s.code()).to_lowercase(),
        };
        self.inner.metrics.observe_rank(outcome, start.elapsed().as_secs_f64());
        let ranked = result?;
        Ok(Response::new(RankResponse { model_version: self.inner.version.clone(), items: ranked.items }))
    }
}
