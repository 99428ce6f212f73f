//! The rollout policy as the engine sees it: already validated, in Rust
//! types. The CRD carries a Kubernetes-shaped copy that `reco-api` converts
//! into this one, naming the field when it is invalid.

use std::time::Duration;

/// How a new model version is rolled out.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutPolicy {
    /// Ordered steps; the version is promoted after the last one passes.
    pub steps: Vec<Step>,
    pub analysis: AnalysisPolicy,
    /// Checked before the first step, against the stable version's offline metrics.
    pub offline_gate: Option<OfflineGate>,
}

/// One step of a rollout.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Mirror traffic to the candidate without serving it; only the
    /// latency and error guardrails are analysed.
    Shadow { duration: Duration },
    /// Serve `weight` percent of users from the candidate until the CTR
    /// analysis passes with at least `min_impressions` on the canary side,
    /// or fails, or `max_duration` runs out.
    Canary {
        weight: u8,
        min_impressions: u64,
        max_duration: Duration,
    },
}

/// How a step's live metrics are judged.
#[derive(Clone, Debug, PartialEq)]
pub struct AnalysisPolicy {
    /// Relative non-inferiority margin in (0, 1): the canary passes once its
    /// CTR is shown to be at least `(1 - ctr_margin)` times stable's.
    pub ctr_margin: f64,
    /// Confidence in (0, 1) of each decision, e.g. 0.95.
    pub confidence: f64,
    /// Guardrail: canary p99 latency may not exceed this.
    pub max_p99_latency: Option<Duration>,
    /// Guardrail: canary error rate (errors / requests) may not exceed this.
    pub max_error_rate: f64,
    /// What happens when a canary step's `max_duration` runs out undecided.
    pub on_timeout: OnTimeout,
}

/// Outcome of a step whose maximum duration ran out without a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnTimeout {
    /// Roll the candidate back (the safe default).
    Rollback,
    /// Treat the step as passed and go on.
    Proceed,
}

/// An offline check before any live traffic: the candidate must not be
/// worse than stable on `metric` by more than `max_regression` (relative).
#[derive(Clone, Debug, PartialEq)]
pub struct OfflineGate {
    /// Name of a metric in the versions' offline metrics, e.g. `ndcg@10`.
    pub metric: String,
    /// Allowed relative regression in [0, 1).
    pub max_regression: f64,
}
