//! CTR analysis of a canary against stable over the same window, with
//! latency and error-rate guardrails.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::AnalysisPolicy;

/// What one side (stable, canary or shadow) did during the analysis window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SideMetrics {
    pub impressions: u64,
    pub clicks: u64,
    /// Recommend requests served by this side (shadow: mirrored requests).
    pub requests: u64,
    pub errors: u64,
    /// p99 latency in seconds over the window, when there were requests.
    pub p99_latency_seconds: Option<f64>,
}

/// Metrics of stable and candidate over the same window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowMetrics {
    pub stable: SideMetrics,
    pub candidate: SideMetrics,
}

/// The verdict of one look at the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AnalysisVerdict {
    /// Enough evidence that the candidate is not worse than the margin.
    Pass,
    /// Enough evidence that the candidate is worse, or a guardrail broke.
    Fail,
    /// Not enough evidence yet, or metrics missing.
    Inconclusive,
}

/// One look at the metrics, as stored in status and shown to users.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisReport {
    pub stable_impressions: u64,
    pub stable_clicks: u64,
    pub stable_ctr: f64,
    pub canary_impressions: u64,
    pub canary_clicks: u64,
    pub canary_ctr: f64,
    pub verdict: AnalysisVerdict,
    /// Why: the statistic and threshold, the guardrail, or what was missing.
    pub message: String,
}

/// Judges a canary window. Repeated looks over a growing window keep their
/// stated error rates (sequential test).
pub fn analyse_canary(_policy: &AnalysisPolicy, _window: &WindowMetrics) -> AnalysisReport {
    unimplemented!("reco-rollout helper")
}

/// Judges a shadow window on guardrails only.
pub fn analyse_shadow(_policy: &AnalysisPolicy, _window: &WindowMetrics) -> AnalysisReport {
    unimplemented!("reco-rollout helper")
}

/// A report for a window whose metrics could not be read.
pub fn metrics_unavailable(reason: &str) -> AnalysisReport {
    AnalysisReport {
        stable_impressions: 0,
        stable_clicks: 0,
        stable_ctr: 0.0,
        canary_impressions: 0,
        canary_clicks: 0,
        canary_ctr: 0.0,
        verdict: AnalysisVerdict::Inconclusive,
        message: format!("metrics unavailable: {reason}"),
    }
}
