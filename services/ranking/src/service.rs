//! The gRPC face: `reco.v1.Ranking/Rank` over a [`Scorer`], run on the blocking pool so that
//! forward passes never stall the async runtime.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use reco_model::artifacts::VersionArtifacts;
use reco_model::drift::DriftWindow;
use reco_model::scoring::N_DENSE;
use reco_proto::ranking_server::Ranking;
use reco_proto::{RankRequest, RankResponse};
use tonic::{Request, Response, Status};

use crate::metrics::Metrics;
use crate::scorer::{BuildError, DriftSettings, RankError, Ranked, Scorer, ScorerSettings};

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
    /// `None` when the version has no feature reference or the monitors are off.
    drift: Option<DriftMonitor>,
}

/// The drift window of one version and how it samples.
#[derive(Debug)]
struct DriftMonitor {
    window: Mutex<DriftWindow>,
    settings: DriftSettings,
    requests: AtomicU64,
}

impl DriftMonitor {
    fn new(artifacts: &VersionArtifacts, settings: DriftSettings) -> Option<Self> {
        let reference = artifacts.ranker_file.feature_reference.clone()?;
        (settings.window_requests > 0).then(|| Self {
            window: Mutex::new(DriftWindow::new(reference)),
            settings,
            requests: AtomicU64::new(0),
        })
    }

    /// Counts the rows of one request in `every`, and closes the window once it is full.
    fn observe(&self, rows: &[[f32; N_DENSE]], metrics: &Metrics) {
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        if rows.is_empty() || !n.is_multiple_of(u64::from(self.settings.sample_every)) {
            return;
        }
        let (check, closed) = {
            let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
            let check = window.observe(rows);
            (check, (window.requests() >= self.settings.window_requests).then(|| window.close()))
        };
        metrics.observe_drift_rows(rows.len(), &check);
        if let Some(psi) = closed {
            metrics.observe_drift_window(&psi);
        }
    }
}

impl RankingService {
    /// A service scoring with `artifacts` (shared with retrieval in `reco standalone`).
    pub fn new(
        artifacts: Arc<VersionArtifacts>,
        version: impl Into<String>,
        settings: &ScorerSettings,
        metrics: Metrics,
    ) -> Result<Self, BuildError> {
        if settings.drift.sample_every == 0 {
            return Err(BuildError::DriftSampling);
        }
        let drift = DriftMonitor::new(&artifacts, settings.drift);
        let scorer = Scorer::new(artifacts, settings)?;
        let version = version.into();
        if drift.is_none() && settings.drift.window_requests > 0 {
            tracing::info!(
                version,
                "no feature reference in ranker.json (trained before drift monitoring): no drift monitors"
            );
        }
        let metrics = metrics.for_version(&version);
        Ok(RankingService { inner: Arc::new(Inner { scorer, version, metrics, drift }) })
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
        if let Some(drift) = &self.inner.drift {
            drift.observe(&ranked.dense, &self.inner.metrics);
        }
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
