//! Metric sources for the rollout analysis: where the operator reads what
//! stable and candidate did over an analysis window.
//!
//! Two sources sit behind one trait, [`MetricSource`], so the controller
//! holds an `Arc<dyn MetricSource>` and does not care which one it has:
//!
//! - [`PrometheusSource`] asks a Prometheus server (HTTP API, PromQL instant
//!   queries with `increase()` and `histogram_quantile()`); see
//!   [`prometheus`] for the exact queries.
//! - [`ScrapeSource`] reads the gateways' `/metrics` itself and keeps the
//!   history it needs (reset-aware like `increase()`); the embedded default
//!   when no Prometheus is installed. See [`scrape`].
//!
//! Both read the series named in [`reco_contracts::metrics`], filtered by the
//! labels `pipeline` and `model_version`, and produce a
//! [`WindowMetrics`]. A source that cannot read a window returns a
//! [`SourceError`] (the caller reports the look as Inconclusive); it never
//! counts what it could not read as zero.
//!
//! This module owns the trait, the query type, the choice of series per side
//! (shared by both sources) and the HTTP client setup.

mod error;
mod exposition;
mod history;
pub mod prometheus;
mod promql;
pub mod scrape;

use std::time::Duration;

use futures::future::BoxFuture;
use jiff::Timestamp;
use reco_contracts::metrics as signals;
use reco_rollout::engine::{self, RolloutState};
use reco_rollout::{RolloutPolicy, VersionPhase, WindowMetrics};

pub use error::{QueryFailure, ScrapeError, SourceError};
pub use prometheus::PrometheusSource;
pub use promql::{SideQueries, WindowQueries, escape_promql_string, window_queries};
pub use reqwest::Url;
pub use scrape::ScrapeSource;

/// Reads what stable and candidate did over one window.
///
/// Object-safe (the future is boxed) so the controller can store an
/// `Arc<dyn MetricSource>` and swap Prometheus for the embedded scraper by
/// configuration alone.
pub trait MetricSource: Send + Sync {
    /// Counts accrued in `[q.start, q.now]` and the p99 latency over it, for
    /// `q.stable` and `q.candidate` of `q.pipeline`.
    fn window<'a>(&'a self, q: &'a WindowQuery) -> BoxFuture<'a, Result<WindowMetrics, SourceError>>;
}

/// One look at the metrics: which versions, over which window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowQuery {
    /// The RecommenderPipeline (label `pipeline`).
    pub pipeline: String,
    /// Its namespace (label `namespace`, which Prometheus' Kubernetes
    /// discovery sets on every target): two pipelines of one name in two
    /// namespaces never mix.
    pub namespace: String,
    /// The stable model version (label `model_version`).
    pub stable: String,
    /// The version under analysis (label `model_version`).
    pub candidate: String,
    /// The candidate only receives mirrored traffic: its side is read from the
    /// shadow series and has no impressions or clicks (nobody saw its items).
    pub candidate_is_shadow: bool,
    /// Start of the window (the start of the rollout step, usually).
    pub start: Timestamp,
    /// End of the window: the moment of the look.
    pub now: Timestamp,
    /// `[from, to]` before the candidate served anyone: every version's
    /// impressions and clicks per user group there are CUPED's covariate.
    /// `None`: not read.
    pub before: Option<(Timestamp, Timestamp)>,
}

impl WindowQuery {
    /// The window of the candidate's current step, from its start to `now`,
    /// as the operator and the local runner both look at it; `None` without
    /// a candidate or a stable to compare it with.
    pub fn for_candidate(
        pipeline: &str,
        namespace: &str,
        policy: &RolloutPolicy,
        state: &RolloutState,
        now: Timestamp,
    ) -> Option<Self> {
        let candidate = state.candidate.as_ref()?;
        let candidate_is_shadow = engine::candidate_phase(policy, candidate) == VersionPhase::Shadow;
        let before = match (policy.analysis.pre_rollout_window, candidate.canary_started_at) {
            (Some(length), Some(canary_start)) if !candidate_is_shadow => {
                let from = canary_start.checked_sub(length).unwrap_or(Timestamp::MIN);
                Some((from, canary_start))
            }
            _ => None,
        };
        Some(WindowQuery {
            pipeline: pipeline.to_owned(),
            namespace: namespace.to_owned(),
            stable: state.stable.clone()?,
            candidate: candidate.version.clone(),
            candidate_is_shadow,
            start: candidate.step_started_at,
            now: now.max(candidate.step_started_at),
            before,
        })
    }

    /// Rejects a window that ends before it starts: a caller bug that would
    /// otherwise turn into an odd PromQL range or a silent empty window.
    fn check(&self) -> Result<(), SourceError> {
        if self.now < self.start {
            return Err(SourceError::InvalidWindow { start: self.start, now: self.now });
        }
        if let Some((from, to)) = self.before
            && to < from
        {
            return Err(SourceError::InvalidWindow { start: from, now: to });
        }
        Ok(())
    }

    /// The series to read for each side, stable first.
    fn sides(&self) -> [SideSeries<'_>; 2] {
        let stable = SideSeries::served(&self.stable);
        let candidate = if self.candidate_is_shadow {
            SideSeries::shadow(&self.candidate)
        } else {
            SideSeries::served(&self.candidate)
        };
        [stable, candidate]
    }
}

/// Which series feed one side of a window: the served series for stable and
/// canary, the shadow series for a shadow candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SideSeries<'a> {
    version: &'a str,
    /// `None` for a shadow version: its answers are never shown.
    impressions: Option<&'static str>,
    clicks: Option<&'static str>,
    requests: &'static str,
    errors: &'static str,
    /// Histogram base name; the buckets are `<latency>_bucket`.
    latency: &'static str,
}

impl<'a> SideSeries<'a> {
    fn served(version: &'a str) -> Self {
        SideSeries {
            version,
            impressions: Some(signals::IMPRESSIONS),
            clicks: Some(signals::CLICKS),
            requests: signals::REQUESTS,
            errors: signals::ERRORS,
            latency: signals::LATENCY,
        }
    }

    fn shadow(version: &'a str) -> Self {
        SideSeries {
            version,
            impressions: None,
            clicks: None,
            requests: signals::SHADOW_REQUESTS,
            errors: signals::SHADOW_ERRORS,
            latency: signals::SHADOW_LATENCY,
        }
    }
}

/// How long one HTTP request (a query or a scrape) may take by default: a
/// stuck Prometheus or gateway must make the look Inconclusive, not hang the
/// reconcile loop.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the HTTP client both sources use (installing the crypto provider, so that constructing a source never
/// panics and https endpoints work too).
fn http_client() -> Result<reqwest::Client, SourceError> {
    reco_runtime::tls::install_crypto_provider();
    reqwest::Client::builder().build().map_err(|e| SourceError::Client(error::chain(&e)))
}

/// Reads a response body, refusing more than `limit` bytes: the body comes
/// from a peer, and a broken one must not make the operator allocate without
/// bound.
async fn read_body(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| error::chain(&e.without_url()))? {
        if body.len() + chunk.len() > limit {
            return Err(format!("body larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn both_sources_fit_behind_the_trait_object() {
        let url: Url = "http://127.0.0.1:9/".parse().expect("valid URL");
        let sources: Vec<Arc<dyn MetricSource>> = vec![
            Arc::new(PrometheusSource::new(url.clone()).expect("a client")),
            Arc::new(ScrapeSource::new(vec![url]).expect("a client")),
        ];
        assert_eq!(sources.len(), 2);
    }
}
