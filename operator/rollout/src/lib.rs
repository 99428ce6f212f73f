//! The reco rollout engine: pure logic that moves a model version through
//! shadow and canary steps to stable, or back, on live click-through rate.
//!
//! Nothing here talks to Kubernetes, the network or the disk. The operator
//! keeps [`engine::RolloutState`] in the pipeline's status, the local runner
//! keeps it in a file; both call [`engine::decide`] with the metrics they read
//! and apply the [`engine::Decision`] it returns.

pub mod analysis;
pub mod engine;
pub mod policy;

pub use analysis::{
    AnalysisReport, AnalysisVerdict, CtrCounts, CtrEstimate, GroupCounts, Groups, SideEstimate, SideMetrics,
    WindowMetrics, analyse_canary_steps, analyse_shadow, metrics_unavailable, p99_from_histogram,
};
pub use engine::{
    CandidateState, Cause, Command, Decision, Observation, RolloutState, VersionInfo, VersionPhase, VersionStatus,
    decide,
};
pub use policy::{AnalysisPolicy, OfflineGate, OnTimeout, RolloutPolicy, Step};
