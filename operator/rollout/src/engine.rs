//! The rollout state machine.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::analysis::AnalysisReport;
use crate::policy::RolloutPolicy;
use crate::routing::RoutingTable;

/// Lifecycle phase of a model version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub enum VersionPhase {
    Pending,
    Shadow,
    Canary,
    Stable,
    RolledBack,
    Failed,
    Retired,
}

/// A manual command on a version (the `reco.seed.dev/promote` and
/// `reco.seed.dev/abort` annotations).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Promote,
    Abort,
}

/// What the engine knows of one model version of the pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct VersionInfo {
    pub name: String,
    /// Creation time: pending versions start in this order (then by name).
    pub created: Timestamp,
    pub offline_metrics: BTreeMap<String, f64>,
    /// `Some(reason)` when the version cannot run (missing artifact, bad spec).
    pub broken: Option<String>,
    pub command: Option<Command>,
}

/// The state the engine persists between calls (pipeline status).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<CandidateState>,
    /// Versions whose rollout ended, with the phase they ended in.
    #[serde(default)]
    pub finished: BTreeMap<String, FinishedVersion>,
    /// The last transitions, newest last, bounded.
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

/// The version being rolled out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CandidateState {
    pub version: String,
    /// Index into the policy's steps.
    pub step: u32,
    #[schemars(with = "String")]
    pub step_started_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_analysis: Option<AnalysisReport>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FinishedVersion {
    pub phase: VersionPhase,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    #[schemars(with = "String")]
    pub time: Timestamp,
    pub version: String,
    pub from: VersionPhase,
    pub to: VersionPhase,
    pub reason: String,
}

/// The status of one version after a decision.
#[derive(Clone, Debug, PartialEq)]
pub struct VersionStatus {
    pub phase: VersionPhase,
    /// Percentage of users served.
    pub weight: u8,
    pub reason: String,
}

/// What the caller must apply after one call of [`decide`].
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub state: RolloutState,
    pub routing: RoutingTable,
    pub versions: BTreeMap<String, VersionStatus>,
    /// Transitions that happened in this call (one Kubernetes Event each).
    pub transitions: Vec<HistoryEntry>,
    /// When to look again.
    pub requeue_after: Duration,
}

/// Inputs of one decision besides the policy and the stored state.
#[derive(Clone, Debug)]
pub struct Observation<'a> {
    pub pipeline: &'a str,
    pub salt: &'a str,
    pub versions: &'a [VersionInfo],
    /// The analysis of the current step's window, if the caller read metrics.
    pub analysis: Option<&'a AnalysisReport>,
    pub paused: bool,
    pub now: Timestamp,
}

/// One step of the state machine.
pub fn decide(_policy: &RolloutPolicy, _state: &RolloutState, _obs: &Observation<'_>) -> Decision {
    unimplemented!("reco-rollout helper")
}
