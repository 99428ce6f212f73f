//! The rollout policy as the engine sees it: already validated, in Rust
//! types. The CRD carries a Kubernetes-shaped copy that `reco-api` converts
//! into this one, naming the field when it is invalid.

use std::time::Duration;

/// How a new model version is rolled out.
///
/// The engine follows the steps as given; `reco-api` validates that shadow
/// steps come before canary steps and canary weights never decrease, which
/// is what keeps a candidate's share growing monotonically.
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
    Canary { weight: u8, min_impressions: u64, max_duration: Duration },
}

/// How a step's live metrics are judged.
#[derive(Clone, Debug, PartialEq)]
pub struct AnalysisPolicy {
    /// Relative non-inferiority margin in (0, 1): the canary passes once its
    /// CTR is shown to be at least `(1 - ctr_margin)` times stable's.
    pub ctr_margin: f64,
    /// Confidence in (0, 1) of each decision, e.g. 0.95.
    pub confidence: f64,
    /// Guardrail: the candidate's p99 latency may not exceed this where
    /// stable's does not (its share of requests over it may exceed stable's
    /// by at most one percentage point).
    pub max_p99_latency: Option<Duration>,
    /// Guardrail: the candidate's error rate may exceed stable's over the
    /// same window by at most this (absolute: 0.01 is one percentage point).
    pub max_error_rate: f64,
    /// What happens when a canary step's `max_duration` runs out undecided.
    pub on_timeout: OnTimeout,
    /// How far before the canary's start users' clicks are read for CUPED
    /// (`None`: not at all). The longer, the better each user group's CTR
    /// is known and the less noise is left; `None` wastes most of the
    /// traffic of heterogeneous users (see `examples/sample_size.rs`).
    pub pre_rollout_window: Option<Duration>,
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

impl RolloutPolicy {
    /// The defaults of the CRD: a 10-minute shadow, then 10%, 25% and 50%
    /// canary steps analysed as one sequential test at 95% confidence with a
    /// 5% CTR margin. From 20,000 impressions a minute (10,000 at CTR ≥ 5%)
    /// an A/A canary is rolled back in ≤ 5% of rollouts and a 10% CTR drop
    /// is caught in ≥ 90% (`tests/simulation.rs`); with less traffic, A/A
    /// canaries time out undecided (raise `max_duration` or the weights).
    pub fn recommended() -> Self {
        const MINUTE: u64 = 60;
        RolloutPolicy {
            steps: vec![
                Step::Shadow { duration: Duration::from_secs(10 * MINUTE) },
                Step::Canary { weight: 10, min_impressions: 20_000, max_duration: Duration::from_secs(240 * MINUTE) },
                Step::Canary { weight: 25, min_impressions: 50_000, max_duration: Duration::from_secs(120 * MINUTE) },
                Step::Canary { weight: 50, min_impressions: 100_000, max_duration: Duration::from_secs(120 * MINUTE) },
            ],
            analysis: AnalysisPolicy::recommended(),
            offline_gate: None,
        }
    }

    /// The canary steps' weights, in order (what a rollout serves the candidate).
    pub fn canary_weights(&self) -> Vec<u8> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Step::Canary { weight, .. } => Some(*weight),
                Step::Shadow { .. } => None,
            })
            .collect()
    }
}

impl AnalysisPolicy {
    /// The CRD's default analysis: see [`RolloutPolicy::recommended`].
    pub fn recommended() -> Self {
        AnalysisPolicy {
            ctr_margin: 0.05,
            confidence: 0.95,
            max_p99_latency: Some(Duration::from_millis(500)),
            max_error_rate: 0.01,
            on_timeout: OnTimeout::Rollback,
            pre_rollout_window: Some(Duration::from_secs(24 * 3600)),
        }
    }
}
