//! Pure derivation of what the controller writes: the engine's state read
//! back from a pipeline's status, and the pipeline's and its versions'
//! desired statuses after a decision. No API calls here: the controller
//! applies what these functions return.

use crate::policy::InvalidSpec;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use kube::runtime::events::EventType;
use reco_api::status::{
    AnalysisStatus, DecidedBy, EndedVersion, HISTORY_LIMIT, RolloutStatus, StepEvidence, Transition, Verdict,
};
use reco_api::{
    ConditionType, ModelVersion, ModelVersionStatus, PipelinePhase, RecommenderPipelineStatus, set_condition,
};
use reco_rollout::engine::{self, CandidateState, Cause, FinishedVersion, HistoryEntry, RolloutState};
use reco_rollout::{AnalysisReport, AnalysisVerdict, CtrCounts, Decision, RolloutPolicy, VersionInfo, VersionPhase};

/// A look at the metrics: the report and when it was made.
#[derive(Clone, Debug, PartialEq)]
pub struct Look {
    pub report: AnalysisReport,
    pub time: Timestamp,
}

/// The engine's state stored in `status`, completed from what the pipeline's
/// `versions` record in their own statuses (see [`remember_versions`]). The
/// candidate's analysis is the status's last one when it judged the
/// candidate's current step.
pub fn engine_state(status: &RecommenderPipelineStatus, versions: &[Arc<ModelVersion>]) -> RolloutState {
    let mut state = stored_state(status);
    remember_versions(&mut state, versions);
    state
}

/// What a pipeline status that was lost (the object re-created, restored
/// from a backup without status, or written by an older operator) no longer
/// says, read back from the ModelVersions' statuses: the version they record
/// as `Stable` stays stable, and a version whose rollout ended stays ended,
/// so nothing is promoted by default and no finished version rolls out
/// again. A version that was mid-rollout starts its rollout again from the
/// first step. What the pipeline's status does say wins: the versions'
/// statuses are written first, so they may be one decision ahead of it.
fn remember_versions(state: &mut RolloutState, versions: &[Arc<ModelVersion>]) {
    let recorded = |version: &ModelVersion| version.status.as_ref().and_then(|status| status.phase);
    if state.stable.is_none() {
        state.stable = versions
            .iter()
            .filter(|version| recorded(version) == Some(reco_api::VersionPhase::Stable))
            .max_by_key(|version| (version.metadata.creation_timestamp.clone(), version.name_any()))
            .map(|version| version.name_any());
    }
    for version in versions {
        let name = version.name_any();
        let in_state = state.stable.as_ref() == Some(&name)
            || state.candidate.as_ref().is_some_and(|candidate| candidate.version == name)
            || state.finished.contains_key(&name);
        let phase = match recorded(version) {
            _ if in_state => continue,
            Some(reco_api::VersionPhase::RolledBack) => VersionPhase::RolledBack,
            Some(reco_api::VersionPhase::Failed) => VersionPhase::Failed,
            // A second stable (only after a lost status) was replaced by the one kept.
            Some(reco_api::VersionPhase::Retired | reco_api::VersionPhase::Stable) => VersionPhase::Retired,
            _ => continue,
        };
        let reason = version.status.as_ref().and_then(|status| status.reason.clone()).unwrap_or_default();
        state.finished.insert(name, FinishedVersion { phase, reason });
    }
}

fn stored_state(status: &RecommenderPipelineStatus) -> RolloutState {
    let candidate = status.candidate.as_ref().map(|rollout| {
        let step = rollout.step.saturating_sub(1);
        let last_analysis = status
            .last_analysis
            .as_ref()
            .filter(|analysis| analysis.version == rollout.version && analysis.step == rollout.step)
            .map(report_of);
        CandidateState {
            version: rollout.version.clone(),
            step,
            step_started_at: rollout.step_started_at.0,
            last_analysis,
            completed_windows: rollout.passed_canary_steps.iter().map(counts_of).collect(),
            canary_started_at: rollout.canary_started_at.as_ref().map(|time| time.0),
        }
    });
    RolloutState {
        stable: status.stable_version.clone(),
        candidate,
        finished: status
            .ended_versions
            .iter()
            .map(|ended| {
                let finished = FinishedVersion { phase: engine_phase(ended.phase), reason: ended.reason.clone() };
                (ended.version.clone(), finished)
            })
            .collect(),
        history: status.history.iter().map(history_entry).collect(),
    }
}

/// When the current step's metrics are next due: after `interval` since the
/// step started and since the last look.
pub fn analysis_due(
    state: &RolloutState,
    last_look: Option<Timestamp>,
    interval: std::time::Duration,
    now: Timestamp,
) -> bool {
    let Some(candidate) = &state.candidate else { return false };
    let since = |t: Timestamp| now.duration_since(t).unsigned_abs();
    since(candidate.step_started_at) >= interval && last_look.is_none_or(|t| since(t) >= interval)
}

/// What a reconcile observed of a pipeline, besides the engine's decision.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    /// The status read with the pipeline.
    pub status: &'a RecommenderPipelineStatus,
    pub generation: Option<i64>,
    pub policy: &'a RolloutPolicy,
    pub paused: bool,
    pub versions: &'a [VersionInfo],
}

/// The pipeline's status after `decision`: the engine's state in the API's
/// shape, the phase, the canary's weight, the latest look and the conditions.
pub fn pipeline_status(
    observed: Observed<'_>,
    decision: &Decision,
    look: Option<&Look>,
    now: Timestamp,
) -> RecommenderPipelineStatus {
    let Observed { status: previous, generation, policy, paused, versions } = observed;
    let state = &decision.state;
    let last_analysis = match (look, &previous.candidate) {
        (Some(look), Some(rollout)) => Some(analysis_status(look, rollout)),
        _ => previous.last_analysis.clone(),
    };
    let mut status = RecommenderPipelineStatus {
        observed_generation: generation,
        phase: Some(pipeline_phase(paused, policy, decision)),
        conditions: previous.conditions.clone(),
        stable_version: state.stable.clone(),
        canary_weight: decision.canary_weight(),
        candidate: state.candidate.as_ref().map(|candidate| rollout_status(policy, candidate)),
        last_analysis,
        ended_versions: state
            .finished
            .iter()
            .map(|(version, finished)| EndedVersion {
                version: version.clone(),
                phase: api_phase(finished.phase),
                reason: finished.reason.clone(),
            })
            .collect(),
        history: state.history.iter().rev().take(HISTORY_LIMIT).rev().map(transition).collect(),
    };
    pipeline_conditions(&mut status.conditions, generation, decision, versions, &Time(now));
    status
}

/// `Idle`, `Shadow`, `Canary` or `Paused`.
fn pipeline_phase(paused: bool, policy: &RolloutPolicy, decision: &Decision) -> PipelinePhase {
    if paused {
        return PipelinePhase::Paused;
    }
    match decision.state.candidate.as_ref().map(|candidate| engine::candidate_phase(policy, candidate)) {
        Some(VersionPhase::Shadow) => PipelinePhase::Shadow,
        Some(_) => PipelinePhase::Canary,
        None => PipelinePhase::Idle,
    }
}

/// A ModelVersion's status after `decision`, or `None` when the decision
/// does not mention it. Its CTR is the last look's side it served on.
pub fn version_status(
    version: &ModelVersion,
    decision: &Decision,
    last_analysis: Option<&AnalysisStatus>,
    now: Timestamp,
) -> Option<ModelVersionStatus> {
    let name = version.name_any();
    let decided = decision.versions.get(&name)?;
    let old = version.status.clone().unwrap_or_default();
    let candidate = decision.state.candidate.as_ref().is_some_and(|c| c.version == name);
    let ctr = match (decided.phase, last_analysis) {
        (VersionPhase::Canary, Some(a)) if candidate => Some(a.canary_ctr),
        (VersionPhase::Stable, Some(a)) => Some(a.stable_ctr),
        _ => old.ctr,
    };
    // Serving pods verified the spec's digest before they became ready.
    let serving = matches!(decided.phase, VersionPhase::Shadow | VersionPhase::Canary | VersionPhase::Stable);
    let mut status = ModelVersionStatus {
        observed_generation: version.metadata.generation,
        phase: Some(api_phase(decided.phase)),
        weight: decided.weight,
        ctr,
        reason: Some(decided.reason.clone()),
        artifact_digest: if serving { version.spec.artifact_digest.clone() } else { old.artifact_digest },
        conditions: old.conditions,
    };
    let reason = format!("{:?}", decided.phase);
    let generation = version.metadata.generation;
    let now = Time(now);
    for (type_, holds) in [
        (ConditionType::Ready, matches!(decided.phase, VersionPhase::Stable | VersionPhase::Canary)),
        (ConditionType::Progressing, matches!(decided.phase, VersionPhase::Shadow | VersionPhase::Canary)),
        (ConditionType::Degraded, matches!(decided.phase, VersionPhase::RolledBack | VersionPhase::Failed)),
    ] {
        set_condition(&mut status.conditions, type_, holds, &reason, &decided.reason, generation, &now);
    }
    Some(status)
}

/// Event reason and type of a transition.
pub fn transition_reason(t: &HistoryEntry) -> (&'static str, EventType) {
    match t.to {
        VersionPhase::Pending => ("Pending", EventType::Normal),
        VersionPhase::Shadow => ("ShadowStarted", EventType::Normal),
        VersionPhase::Canary if t.from == VersionPhase::Canary => ("CanaryStepPassed", EventType::Normal),
        VersionPhase::Canary => ("CanaryStarted", EventType::Normal),
        VersionPhase::Stable => ("Promoted", EventType::Normal),
        VersionPhase::Retired => ("Retired", EventType::Normal),
        VersionPhase::RolledBack => ("RolledBack", EventType::Warning),
        VersionPhase::Failed => ("Failed", EventType::Warning),
    }
}

/// Whether `status` already reports the spec of `generation` invalid (its Event was sent).
pub fn reports_invalid_spec(status: &RecommenderPipelineStatus, generation: Option<i64>) -> bool {
    status.observed_generation == generation
        && status.conditions.iter().any(|c| c.type_ == ConditionType::Ready.as_str() && c.reason == "InvalidSpec")
}

/// The status of a pipeline whose spec the operator cannot act on: `Ready`
/// false naming the field; everything else (the rollout, what serves) kept.
pub fn invalid_spec_status(
    mut status: RecommenderPipelineStatus,
    generation: Option<i64>,
    invalid: &InvalidSpec,
    now: Timestamp,
) -> RecommenderPipelineStatus {
    let message = invalid.to_string();
    set_condition(&mut status.conditions, ConditionType::Ready, false, "InvalidSpec", message, generation, &Time(now));
    status.observed_generation = generation;
    status
}

fn rollout_status(policy: &RolloutPolicy, candidate: &CandidateState) -> RolloutStatus {
    RolloutStatus {
        version: candidate.version.clone(),
        phase: api_phase(engine::candidate_phase(policy, candidate)),
        step: candidate.step + 1,
        steps: u32::try_from(policy.steps.len()).unwrap_or(u32::MAX),
        step_started_at: Time(candidate.step_started_at),
        passed_canary_steps: candidate.completed_windows.iter().map(evidence_of).collect(),
        canary_started_at: candidate.canary_started_at.map(Time),
    }
}

/// The status of a look at the step `rollout` was at when it was taken.
fn analysis_status(look: &Look, rollout: &RolloutStatus) -> AnalysisStatus {
    let report = &look.report;
    let elapsed = look.time.duration_since(rollout.step_started_at.0);
    AnalysisStatus {
        time: Some(Time(look.time)),
        version: rollout.version.clone(),
        step: rollout.step,
        stable_impressions: report.stable_impressions,
        stable_clicks: report.stable_clicks,
        stable_ctr: report.stable_ctr,
        canary_impressions: report.canary_impressions,
        canary_clicks: report.canary_clicks,
        canary_ctr: report.canary_ctr,
        verdict: match report.verdict {
            AnalysisVerdict::Pass => Verdict::Pass,
            AnalysisVerdict::Fail => Verdict::Fail,
            AnalysisVerdict::Inconclusive => Verdict::Inconclusive,
            AnalysisVerdict::SampleRatioMismatch => Verdict::SampleRatioMismatch,
        },
        message: report.message.clone(),
        estimate: report.estimate.map(api_estimate),
        impressions_to_decide: report.impressions_to_decide,
        to_decide: report.impressions_to_decide.map(|needed| to_decide(needed, report.canary_impressions, elapsed)),
    }
}

/// "~120000 impressions (~2h at 1000/min)": the impressions still needed and
/// how long they take at the canary's rate over `elapsed`.
fn to_decide(needed: u64, canary_impressions: u64, elapsed: jiff::SignedDuration) -> String {
    let minutes = elapsed.as_secs_f64() / 60.0;
    if canary_impressions == 0 || minutes <= 0.0 {
        return format!("~{needed} impressions");
    }
    let per_minute = canary_impressions as f64 / minutes;
    let wait = std::time::Duration::from_secs_f64((needed as f64 / per_minute * 60.0).min(1e9));
    format!("~{needed} impressions (~{} at {per_minute:.0}/min)", engine::human(round_to_minutes(wait)))
}

fn round_to_minutes(duration: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_secs(duration.as_secs().div_ceil(60) * 60)
}

/// The engine's view of a look the operator recorded (also how the cluster demo reads it).
pub fn report_of(analysis: &AnalysisStatus) -> AnalysisReport {
    AnalysisReport {
        stable_impressions: analysis.stable_impressions,
        stable_clicks: analysis.stable_clicks,
        stable_ctr: analysis.stable_ctr,
        canary_impressions: analysis.canary_impressions,
        canary_clicks: analysis.canary_clicks,
        canary_ctr: analysis.canary_ctr,
        verdict: match analysis.verdict {
            Verdict::Pass => AnalysisVerdict::Pass,
            Verdict::Fail => AnalysisVerdict::Fail,
            Verdict::Inconclusive => AnalysisVerdict::Inconclusive,
            Verdict::SampleRatioMismatch => AnalysisVerdict::SampleRatioMismatch,
        },
        message: analysis.message.clone(),
        estimate: analysis.estimate.map(engine_estimate),
        impressions_to_decide: analysis.impressions_to_decide,
    }
}

fn counts_of(evidence: &StepEvidence) -> CtrCounts {
    CtrCounts {
        stable_impressions: evidence.stable_impressions,
        stable_clicks: evidence.stable_clicks,
        canary_impressions: evidence.canary_impressions,
        canary_clicks: evidence.canary_clicks,
        estimate: evidence.estimate.map(engine_estimate),
    }
}

fn evidence_of(counts: &CtrCounts) -> StepEvidence {
    StepEvidence {
        stable_impressions: counts.stable_impressions,
        stable_clicks: counts.stable_clicks,
        canary_impressions: counts.canary_impressions,
        canary_clicks: counts.canary_clicks,
        estimate: counts.estimate.map(api_estimate),
    }
}

fn api_estimate(estimate: reco_rollout::CtrEstimate) -> reco_api::CtrEstimate {
    let side = |side: reco_rollout::SideEstimate| reco_api::SideEstimate {
        ctr: side.ctr,
        variance: side.variance,
        groups: side.groups,
    };
    reco_api::CtrEstimate {
        stable: side(estimate.stable),
        canary: side(estimate.canary),
        variance_reduction: estimate.variance_reduction,
    }
}

fn engine_estimate(estimate: reco_api::CtrEstimate) -> reco_rollout::CtrEstimate {
    let side = |side: reco_api::SideEstimate| reco_rollout::SideEstimate {
        ctr: side.ctr,
        variance: side.variance,
        groups: side.groups,
    };
    reco_rollout::CtrEstimate {
        stable: side(estimate.stable),
        canary: side(estimate.canary),
        variance_reduction: estimate.variance_reduction,
    }
}

fn transition(entry: &HistoryEntry) -> Transition {
    Transition {
        time: Time(entry.time),
        version: entry.version.clone(),
        from: api_phase(entry.from),
        to: api_phase(entry.to),
        decided_by: match entry.cause {
            Cause::Analysis => DecidedBy::Analysis,
            Cause::Timeout => DecidedBy::Timeout,
            Cause::Command => DecidedBy::Command,
            Cause::Lifecycle => DecidedBy::Lifecycle,
        },
        reason: entry.reason.clone(),
    }
}

/// The engine's view of a recorded transition.
pub fn history_entry(transition: &Transition) -> HistoryEntry {
    HistoryEntry {
        time: transition.time.0,
        version: transition.version.clone(),
        from: engine_phase(transition.from),
        to: engine_phase(transition.to),
        cause: match transition.decided_by {
            DecidedBy::Analysis => Cause::Analysis,
            DecidedBy::Timeout => Cause::Timeout,
            DecidedBy::Command => Cause::Command,
            DecidedBy::Lifecycle => Cause::Lifecycle,
        },
        reason: transition.reason.clone(),
    }
}

/// The API's name of an engine phase.
fn api_phase(phase: VersionPhase) -> reco_api::VersionPhase {
    use reco_api::VersionPhase as Api;
    match phase {
        VersionPhase::Pending => Api::Pending,
        VersionPhase::Shadow => Api::Shadow,
        VersionPhase::Canary => Api::Canary,
        VersionPhase::Stable => Api::Stable,
        VersionPhase::RolledBack => Api::RolledBack,
        VersionPhase::Failed => Api::Failed,
        VersionPhase::Retired => Api::Retired,
    }
}

/// The engine's name of an API phase.
pub fn engine_phase(phase: reco_api::VersionPhase) -> VersionPhase {
    use reco_api::VersionPhase as Api;
    match phase {
        Api::Pending => VersionPhase::Pending,
        Api::Shadow => VersionPhase::Shadow,
        Api::Canary => VersionPhase::Canary,
        Api::Stable => VersionPhase::Stable,
        Api::RolledBack => VersionPhase::RolledBack,
        Api::Failed => VersionPhase::Failed,
        Api::Retired => VersionPhase::Retired,
    }
}

fn pipeline_conditions(
    conditions: &mut Vec<Condition>,
    generation: Option<i64>,
    decision: &Decision,
    versions: &[VersionInfo],
    now: &Time,
) {
    match &decision.state.stable {
        Some(stable) => {
            let routes: Vec<String> =
                decision.routing.versions.iter().map(|v| format!("{} {}%", v.name, v.weight)).collect();
            let serving = format!("serving {}", routes.join(", "));
            set_condition(conditions, ConditionType::Ready, true, "Serving", serving, generation, now);
            let mismatch = decision
                .state
                .candidate
                .as_ref()
                .and_then(|candidate| candidate.last_analysis.as_ref())
                .filter(|report| report.verdict == AnalysisVerdict::SampleRatioMismatch);
            match (versions.iter().find(|v| &v.name == stable).and_then(|v| v.broken.clone()), mismatch) {
                (Some(reason), _) => {
                    set_condition(conditions, ConditionType::Degraded, true, "StableUnhealthy", reason, generation, now)
                }
                (None, Some(report)) => {
                    let message = format!("rollout held, promote or abort it by annotation: {}", report.message);
                    set_condition(
                        conditions,
                        ConditionType::Degraded,
                        true,
                        "SampleRatioMismatch",
                        message,
                        generation,
                        now,
                    )
                }
                (None, None) => degraded_from_history(conditions, generation, decision, now),
            }
        }
        None => {
            let waiting = "waiting for a ModelVersion of this pipeline";
            set_condition(conditions, ConditionType::Ready, false, "NoStableVersion", waiting, generation, now);
            degraded_from_history(conditions, generation, decision, now);
        }
    }
    let (progressing, reason, message) = match &decision.state.candidate {
        Some(c) => (true, "RollingOut", format!("{} at step {}", c.version, c.step + 1)),
        None => (false, "Idle", "no rollout in progress".to_owned()),
    };
    set_condition(conditions, ConditionType::Progressing, progressing, reason, message, generation, now);
}

/// Degraded while the last rollout ended in a rollback or failure.
fn degraded_from_history(conditions: &mut Vec<Condition>, generation: Option<i64>, decision: &Decision, now: &Time) {
    match decision.state.history.iter().rev().find(|h| h.to != VersionPhase::Retired) {
        Some(last) if matches!(last.to, VersionPhase::RolledBack | VersionPhase::Failed) => {
            let message = format!("{} {:?}: {}", last.version, last.to, last.reason);
            let reason = format!("{:?}", last.to);
            set_condition(conditions, ConditionType::Degraded, true, &reason, message, generation, now)
        }
        _ => set_condition(conditions, ConditionType::Degraded, false, "Healthy", "", generation, now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reco_rollout::engine::Observation;
    use reco_rollout::{SideMetrics, WindowMetrics, decide};

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn version(name: &str, created: i64) -> VersionInfo {
        VersionInfo {
            name: name.into(),
            created: at(created),
            offline_metrics: Default::default(),
            broken: None,
            ready: true,
            command: None,
        }
    }

    /// `per_group` impressions in each user group, the canary owning those
    /// of its `weight`, clicks at 5% give or take one (so the CTR has a
    /// variance and its estimates, f64s, go through the status).
    fn window(per_group: u64, weight: u8) -> WindowMetrics {
        let side = |groups: std::ops::Range<u64>| {
            let groups: reco_rollout::Groups = groups
                .map(|group| {
                    let clicks = per_group / 20 + group % 3;
                    (group as u16, reco_rollout::GroupCounts { impressions: per_group, clicks })
                })
                .collect();
            let impressions = groups.values().map(|g| g.impressions).sum::<u64>();
            let clicks = groups.values().map(|g| g.clicks).sum();
            SideMetrics { impressions, clicks, requests: impressions / 10, groups, ..SideMetrics::default() }
        };
        let split = reco_contracts::routing::groups_of_weight(weight);
        WindowMetrics {
            stable: side(split..reco_contracts::routing::USER_GROUPS),
            candidate: side(0..split),
            before: Default::default(),
        }
    }

    /// Runs the operator's loop for `looks` looks, each one converting the
    /// state through the status as the controller does, and checks that the
    /// status gives the engine back exactly the state it decided.
    #[test]
    fn status_round_trips_the_engine_state_through_a_rollout() {
        let policy = RolloutPolicy::recommended();
        let versions = [version("v1", 0), version("v2", 1), version("v3", 2)];
        let mut status = RecommenderPipelineStatus::default();
        let mut states = 0;
        for look in 0..400 {
            let now = at(60 * look);
            let state = engine_state(&status, &[]);
            let report = state.candidate.as_ref().map(|c| {
                let weight = match policy.steps.get(c.step as usize) {
                    Some(reco_rollout::Step::Canary { weight, .. }) => *weight,
                    _ => 0,
                };
                c.analyse(&policy, &window(20 * (look as u64 % 7 + 1), weight))
            });
            let observation = Observation {
                pipeline: "explore",
                salt: "explore",
                versions: &versions,
                analysis: report.as_ref(),
                paused: false,
                now,
            };
            let decision = decide(&policy, &state, &observation);
            let look = report.map(|report| Look { report, time: now });
            let observed =
                Observed { status: &status, generation: Some(1), policy: &policy, paused: false, versions: &versions };
            status = pipeline_status(observed, &decision, look.as_ref(), now);
            assert_eq!(engine_state(&status, &[]), decision.state, "after look {look:?}");
            states += usize::from(decision.state.candidate.is_some());
        }
        assert!(states > 10, "the loop never rolled a version out");
        assert!(!status.history.is_empty() && status.history.len() <= HISTORY_LIMIT);
        // v2's rollout ended (promoted, retiring v1, or rolled back) and v3's began.
        assert!(!status.ended_versions.is_empty(), "{status:#?}");
        assert!(status.history.iter().any(|t| t.version == "v3"), "{status:#?}");
    }

    fn recorded(name: &str, phase: Option<reco_api::VersionPhase>) -> Arc<ModelVersion> {
        let spec = reco_api::ModelVersionSpec {
            pipeline: "explore".into(),
            artifact_uri: format!("file:///models/{name}"),
            offline_metrics: Default::default(),
            artifact_digest: None,
            image: None,
        };
        let mut version = ModelVersion::new(name, spec);
        version.status =
            Some(ModelVersionStatus { phase, reason: Some(format!("{name} reason")), ..Default::default() });
        Arc::new(version)
    }

    #[test]
    fn a_lost_status_is_rebuilt_from_the_versions_statuses() {
        use reco_api::VersionPhase as Api;
        let versions = [
            recorded("v1", Some(Api::Retired)),
            recorded("v2", Some(Api::Stable)),
            recorded("v3", Some(Api::RolledBack)),
            recorded("v4", Some(Api::Failed)),
            recorded("v5", Some(Api::Canary)),
            recorded("v6", None),
        ];
        let state = engine_state(&RecommenderPipelineStatus::default(), &versions);
        assert_eq!(state.stable.as_deref(), Some("v2"));
        assert!(state.candidate.is_none());
        let ended: Vec<(&str, VersionPhase)> =
            state.finished.iter().map(|(name, finished)| (name.as_str(), finished.phase)).collect();
        assert_eq!(
            ended,
            [("v1", VersionPhase::Retired), ("v3", VersionPhase::RolledBack), ("v4", VersionPhase::Failed)],
            "v5 was mid-rollout and starts again, v6 never ran"
        );
        assert_eq!(state.finished["v3"].reason, "v3 reason");
    }

    #[test]
    fn the_pipeline_status_wins_over_versions_one_decision_ahead() {
        use reco_api::VersionPhase as Api;
        // The versions' statuses were written (v2 promoted, v1 retired), the pipeline's was not.
        let status = RecommenderPipelineStatus {
            stable_version: Some("v1".into()),
            candidate: Some(RolloutStatus {
                version: "v2".into(),
                phase: Api::Canary,
                step: 4,
                steps: 4,
                step_started_at: Time(at(0)),
                passed_canary_steps: Vec::new(),
                canary_started_at: None,
            }),
            ..Default::default()
        };
        let state = engine_state(&status, &[recorded("v1", Some(Api::Retired)), recorded("v2", Some(Api::Stable))]);
        assert_eq!(state.stable.as_deref(), Some("v1"));
        assert_eq!(state.candidate.map(|candidate| candidate.version).as_deref(), Some("v2"));
        assert!(state.finished.is_empty(), "{:?}", state.finished);
    }

    #[test]
    fn the_candidate_shows_its_step_counted_from_one() {
        let policy = RolloutPolicy::recommended();
        let versions = [version("v1", 0), version("v2", 1)];
        let observe = |now| Observation {
            pipeline: "explore",
            salt: "explore",
            versions: &versions,
            analysis: None,
            paused: false,
            now,
        };
        let first = decide(&policy, &RolloutState::default(), &observe(at(0)));
        let empty = RecommenderPipelineStatus::default();
        let observed =
            Observed { status: &empty, generation: Some(4), policy: &policy, paused: false, versions: &versions };
        let status = pipeline_status(observed, &first, None, at(0));
        let candidate = status.candidate.expect("v2 rolls out after v1 became stable");
        assert_eq!((candidate.version.as_str(), candidate.step, candidate.steps), ("v2", 1, 4));
        assert_eq!(candidate.phase, reco_api::VersionPhase::Shadow);
        assert_eq!(status.phase, Some(PipelinePhase::Shadow));
        assert_eq!(status.observed_generation, Some(4));
        let progressing = status.conditions.iter().find(|c| c.type_ == "Progressing").unwrap();
        assert_eq!((progressing.status.as_str(), progressing.message.as_str()), ("True", "v2 at step 1"));
    }

    #[test]
    fn events_name_the_transition() {
        let entry = |from, to| HistoryEntry {
            time: Timestamp::UNIX_EPOCH,
            version: "v2".into(),
            from,
            to,
            cause: Cause::Analysis,
            reason: String::new(),
        };
        assert_eq!(transition_reason(&entry(VersionPhase::Canary, VersionPhase::Stable)).0, "Promoted");
        assert_eq!(transition_reason(&entry(VersionPhase::Canary, VersionPhase::Canary)).0, "CanaryStepPassed");
        assert!(matches!(
            transition_reason(&entry(VersionPhase::Canary, VersionPhase::RolledBack)).1,
            EventType::Warning
        ));
    }
}
