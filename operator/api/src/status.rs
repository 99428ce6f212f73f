//! The status the operator writes on a RecommenderPipeline: a stable,
//! documented shape for users, dashboards and GitOps health checks. It is
//! not the rollout engine's internal state; the operator converts between
//! the two, so the engine can change without an API change.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Transitions kept in [`RecommenderPipelineStatus::history`].
pub const HISTORY_LIMIT: usize = 20;

/// What a pipeline is doing.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PipelinePhase {
    /// No version is rolling out.
    Idle,
    /// A version receives a mirrored copy of the traffic.
    Shadow,
    /// A version serves a share of the users.
    Canary,
    /// `spec.paused`: nothing advances, promotes or rolls back.
    Paused,
}

/// Lifecycle phase of a model version.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum VersionPhase {
    /// Waiting for its turn (one version rolls out at a time).
    Pending,
    Shadow,
    Canary,
    /// Serves the users that no canary serves.
    Stable,
    /// Its rollout failed an analysis, ran out of time or was aborted.
    RolledBack,
    /// It could not run (pods that do not start, an offline gate it failed).
    Failed,
    /// It was stable and another version replaced it.
    Retired,
}

/// Observed state of a RecommenderPipeline, written by the operator only.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RecommenderPipelineStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PipelinePhase>,
    /// `Ready`, `Progressing` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The version that serves every user the canary does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_version: Option<String>,
    /// Percentage of users served by the canary (0 when none).
    #[serde(default)]
    pub canary_weight: u8,
    /// The version rolling out, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<RolloutStatus>,
    /// The most recent look at live metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_analysis: Option<AnalysisStatus>,
    /// Versions whose rollout ended, and how: they are never rolled out again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["version"]))]
    pub ended_versions: Vec<EndedVersion>,
    /// The last transitions, oldest first, at most 20.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Transition>,
}

/// The version being rolled out and where it stands.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    pub version: String,
    /// `Shadow` or `Canary`.
    pub phase: VersionPhase,
    /// The current step, counted from 1.
    pub step: u32,
    /// Steps of the policy.
    pub steps: u32,
    /// When the current step started: its analysis window begins here.
    pub step_started_at: Time,
    /// Evidence of the canary steps already passed, oldest first: the
    /// current step's test combines it with its own window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passed_canary_steps: Vec<StepEvidence>,
    /// When the candidate first served users: the pre-rollout window for
    /// CUPED ends here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_started_at: Option<Time>,
}

/// Impressions and clicks of both sides over one canary step, with the
/// CTR estimates the test combines.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StepEvidence {
    pub stable_impressions: u64,
    pub stable_clicks: u64,
    pub canary_impressions: u64,
    pub canary_clicks: u64,
    /// Absent for a step judged before user groups were measured: it adds
    /// no evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<CtrEstimate>,
}

/// Both sides' CTR estimates over one step, with their variance across
/// user groups.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CtrEstimate {
    pub stable: SideEstimate,
    pub canary: SideEstimate,
    /// Share of the variance CUPED removed, 0 to 1.
    pub variance_reduction: f64,
}

/// One side's CTR (CUPED-adjusted) and its variance.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SideEstimate {
    pub ctr: f64,
    pub variance: f64,
    /// User groups with impressions.
    pub groups: u32,
}

/// The outcome of one look at the metrics.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The step's test passed (for a canary: its CTR is not worse than stable's by the margin).
    Pass,
    /// The step failed: a worse CTR, or a guardrail.
    Fail,
    /// Not enough evidence yet, or the metrics could not be read.
    Inconclusive,
    /// The canary does not get the share of traffic its weight promises:
    /// the rollout holds (Degraded) until a human promotes or aborts it.
    SampleRatioMismatch,
}

/// One look at the live metrics of a rollout step, with its evidence.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStatus {
    /// When the metrics were read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// The version judged (empty in a status written before it was recorded).
    #[serde(default)]
    pub version: String,
    /// The step judged, counted from 1 (0 in a status written before it was recorded).
    #[serde(default)]
    pub step: u32,
    pub stable_impressions: u64,
    pub stable_clicks: u64,
    pub stable_ctr: f64,
    pub canary_impressions: u64,
    pub canary_clicks: u64,
    pub canary_ctr: f64,
    pub verdict: Verdict,
    /// Why: the statistic and threshold, the guardrail, or what was missing.
    pub message: String,
    /// This step's CTR estimates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<CtrEstimate>,
    /// While undecided: about how many more canary impressions the test needs
    /// if the effect seen so far holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impressions_to_decide: Option<u64>,
    /// The same, in words with the time it takes at the canary's rate so
    /// far, e.g. `~120000 impressions (~2h at 1000/min)`: what `kubectl get`
    /// shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_decide: Option<String>,
}

/// A version whose rollout ended.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndedVersion {
    pub version: String,
    /// `RolledBack`, `Failed` or `Retired`.
    pub phase: VersionPhase,
    pub reason: String,
}

/// One change of a version's phase or step.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    pub time: Time,
    pub version: String,
    pub from: VersionPhase,
    /// Equal to `from` when the version moved to its next step.
    pub to: VersionPhase,
    pub decided_by: DecidedBy,
    pub reason: String,
}

/// What decided a transition.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecidedBy {
    /// A step's analysis, or a shadow step's end.
    Analysis,
    /// A canary step's `maxDuration` ran out undecided: `analysis.onTimeout` applied.
    Timeout,
    /// A `reco.seed.dev/promote` or `reco.seed.dev/abort` annotation.
    Command,
    /// The lifecycle around a rollout: a start, a first version, a replaced
    /// stable, a deleted or broken version, the offline gate.
    Lifecycle,
}
