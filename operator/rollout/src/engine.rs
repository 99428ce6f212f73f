//! The rollout state machine of one pipeline: which version is stable,
//! which one is rolled out and at which step, and how the others ended.
//!
//! - Versions wait `Pending` in creation order (then name); one candidate at
//!   a time runs the policy's steps, so a pipeline has at most one shadow or
//!   canary. The first version (no stable yet) becomes `Stable` directly.
//! - A shadow step passes when its duration is over unless its guardrails
//!   failed (undecided too: the canary steps judge the candidate next). A
//!   canary step passes on a `Pass` with the step's minimum canary
//!   impressions, rolls back on a `Fail`, holds its weight otherwise, and
//!   applies `on_timeout` once `max_duration` is over.
//! - A version gets traffic (shadow, canary, or promoted by annotation) only
//!   once its pods are ready: the next version in line waits `Pending`
//!   meanwhile, and [`Decision::starting`] names it so its pods are made.
//!   The first version is promoted at once (there is nothing to protect).
//! - A broken *pending* version is skipped while broken (it stays `Pending`
//!   and starts once fixed); a broken *candidate* ends `Failed`; a broken
//!   *stable* keeps serving (bad input never demotes it), noted in its reason.
//! - Commands: `Abort` ends a candidate or a pending version `RolledBack`
//!   ("aborted by annotation"); `Promote` makes a candidate stable at once,
//!   and a pending version stable when its turn comes (skipping the offline
//!   gate and the steps; the queue order holds). Commands on stable or
//!   finished versions are ignored.
//! - A candidate deleted mid-rollout is dropped (routing back to stable). A
//!   deleted stable keeps its routing until another version is promoted: the
//!   engine never leaves a pipeline without a serving version; the
//!   controller reports it degraded.
//! - `paused` freezes everything: no transition, the stored routing. Step
//!   timers keep running while paused (pausing does not extend them): a
//!   step whose time ran out acts on the first call after the pause.
//! - The observation must list every version: finished versions that are no
//!   longer listed are forgotten (their names may be reused).

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::analysis::{self, AnalysisReport, AnalysisVerdict, CtrCounts, WindowMetrics};
use crate::policy::{OnTimeout, RolloutPolicy, Step};
use reco_contracts::routing::RoutingTable;

mod offline_gate;
#[cfg(test)]
mod tests;
mod view;

/// Transitions kept in [`RolloutState::history`].
pub const HISTORY_LIMIT: usize = 20;
/// Requeue while a candidate is in flight (sooner when a step timer is due).
pub const ACTIVE_REQUEUE: Duration = Duration::from_secs(10);
/// Requeue when nothing is in flight or the rollout is paused.
pub const IDLE_REQUEUE: Duration = Duration::from_secs(300);

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
    /// Whether its pods are ready to take traffic.
    pub ready: bool,
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
    /// The latest analysis of the current step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_analysis: Option<AnalysisReport>,
    /// Counts of the canary steps already passed: the current step's
    /// analysis combines them with its own window (one sequential test).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub completed_windows: Vec<CtrCounts>,
    /// When the candidate first served users (its first canary step began):
    /// what users did before is untouched by it, CUPED's covariate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub canary_started_at: Option<Timestamp>,
}

impl CandidateState {
    /// The analysis to put in the next [`Observation`], from the metrics of
    /// the current step's window (since `step_started_at`): guardrails for a
    /// shadow step, the sequential CTR test over all canary steps so far for
    /// a canary step.
    pub fn analyse(&self, policy: &RolloutPolicy, window: &WindowMetrics) -> AnalysisReport {
        match policy.steps.get(self.step as usize) {
            Some(Step::Shadow { .. }) => analysis::analyse_shadow(policy, window),
            _ => analysis::analyse_canary_steps(policy, self.step as usize, &self.completed_windows, window),
        }
    }
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
    /// What decided it, for callers that count outcomes (never parse `reason`).
    #[serde(default)]
    pub cause: Cause,
    pub reason: String,
}

/// What decided a transition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Cause {
    /// A step's analysis, or a shadow step's end.
    Analysis,
    /// A canary step's `max_duration` ran out undecided: `on_timeout` applied.
    Timeout,
    /// A promote or abort annotation.
    Command,
    /// The lifecycle around a rollout: a start, a first version, a
    /// replaced stable, a deleted or broken version, the offline gate.
    #[default]
    Lifecycle,
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
    /// Transitions that happened in this call (one Kubernetes Event each):
    /// phase changes, and step changes within a phase (`from == to`).
    pub transitions: Vec<HistoryEntry>,
    /// The version next in line, waiting for its pods before its rollout starts.
    pub starting: Option<String>,
    /// When to look again.
    pub requeue_after: Duration,
}

impl Decision {
    /// Percentage of users the candidate serves (0 when none, or in shadow).
    pub fn canary_weight(&self) -> u8 {
        let candidate = self.state.candidate.as_ref().map(|candidate| candidate.version.as_str());
        self.routing
            .versions
            .iter()
            .find(|routed| Some(routed.name.as_str()) == candidate)
            .map_or(0, |routed| routed.weight)
    }
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
///
/// Pure: the result depends only on the arguments, so a controller that
/// restarts from the stored state resumes exactly where it was. The
/// observation's analysis must be of the stored candidate's current step
/// (see [`CandidateState::analyse`]); it is not used for a candidate that
/// starts or changes step in this call.
pub fn decide(policy: &RolloutPolicy, state: &RolloutState, obs: &Observation<'_>) -> Decision {
    let mut run = Run {
        policy,
        obs,
        versions: obs.versions.iter().map(|version| (version.name.as_str(), version)).collect(),
        state: state.clone(),
        transitions: Vec::new(),
    };
    if !obs.paused {
        run.abort_pending();
        run.advance_candidate();
        run.start_next();
        run.forget_deleted();
        let history = &mut run.state.history;
        history.extend(run.transitions.iter().cloned());
        let excess = history.len().saturating_sub(HISTORY_LIMIT);
        history.drain(..excess);
    }
    view::decision(policy, obs, run.state, run.transitions)
}

/// The state being changed by one call of [`decide`].
struct Run<'a> {
    policy: &'a RolloutPolicy,
    obs: &'a Observation<'a>,
    versions: BTreeMap<&'a str, &'a VersionInfo>,
    state: RolloutState,
    transitions: Vec<HistoryEntry>,
}

impl Run<'_> {
    /// Ends every pending version that carries an abort command.
    fn abort_pending(&mut self) {
        let aborted: Vec<String> = pending(&self.state, self.obs.versions)
            .filter(|version| version.command == Some(Command::Abort))
            .map(|version| version.name.clone())
            .collect();
        for name in aborted {
            let reason = "aborted by annotation before its rollout started".to_owned();
            self.finish(&name, VersionPhase::Pending, VersionPhase::RolledBack, Cause::Command, reason);
        }
    }

    /// Applies deletion, breakage, commands and the current step's rules to the candidate.
    fn advance_candidate(&mut self) {
        let Some(candidate) = self.state.candidate.take() else {
            return;
        };
        let name = candidate.version.clone();
        let phase = candidate_phase(self.policy, &candidate);
        let Some(info) = self.versions.get(name.as_str()).copied() else {
            let reason = "version deleted during its rollout".to_owned();
            self.record(&name, phase, VersionPhase::RolledBack, Cause::Lifecycle, reason);
            return;
        };
        if let Some(broken) = &info.broken {
            self.finish(&name, phase, VersionPhase::Failed, Cause::Lifecycle, format!("broken: {broken}"));
        } else if info.command == Some(Command::Abort) {
            self.finish(&name, phase, VersionPhase::RolledBack, Cause::Command, "aborted by annotation".to_owned());
        } else if info.command == Some(Command::Promote) {
            self.promote(&name, phase, Cause::Command, "promoted by annotation".to_owned());
        } else if self.state.stable.is_none() {
            self.promote(&name, phase, Cause::Lifecycle, "no stable version to compare with".to_owned());
        } else {
            self.run_step(candidate, phase);
        }
    }

    /// Judges the candidate's current step: pass, fail, time out or hold.
    fn run_step(&mut self, mut candidate: CandidateState, phase: VersionPhase) {
        let Some(step) = self.policy.steps.get(candidate.step as usize) else {
            // The policy lost steps during the rollout: every remaining one passed.
            self.promote(&candidate.version, phase, Cause::Lifecycle, "every step of the policy passed".to_owned());
            return;
        };
        let analysis = self.obs.analysis;
        if let Some(report) = analysis {
            candidate.last_analysis = Some(report.clone());
        }
        let verdict = analysis.map(|report| report.verdict);
        let message = analysis.map_or("no analysis", |report| report.message.as_str());
        let label = step_label(self.policy, candidate.step);
        let elapsed = elapsed_since(candidate.step_started_at, self.obs.now);
        match step {
            Step::Shadow { duration } => {
                if verdict == Some(AnalysisVerdict::Fail) {
                    self.finish(
                        &candidate.version,
                        phase,
                        VersionPhase::RolledBack,
                        Cause::Analysis,
                        format!("{label} failed: {message}"),
                    );
                } else if elapsed >= *duration {
                    self.pass_step(candidate, phase, Cause::Analysis, format!("{label} passed"));
                } else {
                    self.state.candidate = Some(candidate);
                }
            }
            Step::Canary { min_impressions, max_duration, .. } => {
                let impressions = analysis.map_or(0, |report| report.canary_impressions);
                match verdict {
                    Some(AnalysisVerdict::Fail) => {
                        let reason = format!("{label} failed: {message}");
                        self.finish(&candidate.version, phase, VersionPhase::RolledBack, Cause::Analysis, reason);
                    }
                    // Numbers from a skewed split cannot be trusted either way, and
                    // running out the clock must not decide for them: hold for a human.
                    Some(AnalysisVerdict::SampleRatioMismatch) => self.state.candidate = Some(candidate),
                    Some(AnalysisVerdict::Pass) if impressions >= *min_impressions => {
                        self.pass_step(candidate, phase, Cause::Analysis, format!("{label} passed: {message}"));
                    }
                    _ if elapsed >= *max_duration => {
                        let undecided = format!("{label} undecided after {}: {message}", human(*max_duration));
                        // Proceeding on a step that never saw traffic on both sides would
                        // promote a version nobody measured.
                        let measured = candidate
                            .last_analysis
                            .as_ref()
                            .is_some_and(|report| report.canary_impressions > 0 && report.stable_impressions > 0);
                        let reason = match self.policy.analysis.on_timeout {
                            OnTimeout::Proceed if measured => {
                                let reason = format!("{undecided}; proceeding");
                                return self.pass_step(candidate, phase, Cause::Timeout, reason);
                            }
                            OnTimeout::Proceed => format!("{undecided}; not proceeding: no impressions were ever read"),
                            OnTimeout::Rollback => undecided,
                        };
                        self.finish(&candidate.version, phase, VersionPhase::RolledBack, Cause::Timeout, reason);
                    }
                    _ => self.state.candidate = Some(candidate),
                }
            }
        }
    }

    /// Moves the candidate to its next step, or promotes it after the last.
    fn pass_step(&mut self, candidate: CandidateState, phase: VersionPhase, cause: Cause, reason: String) {
        let CandidateState { version, step, last_analysis, mut completed_windows, canary_started_at, .. } = candidate;
        if let (Some(Step::Canary { .. }), Some(report)) = (self.policy.steps.get(step as usize), &last_analysis) {
            completed_windows.push(CtrCounts::of_report(report));
        }
        let next = step + 1;
        let Some(next_step) = self.policy.steps.get(next as usize) else {
            let steps = self.policy.steps.len();
            self.promote(&version, phase, cause, format!("{reason}; all {steps} steps passed"));
            return;
        };
        let reason = format!("{reason}; now {}", step_label(self.policy, next));
        self.record(&version, phase, step_phase(next_step), cause, reason);
        let canary_started_at = canary_started_at.or_else(|| canary_start(next_step, self.obs.now));
        self.state.candidate = Some(CandidateState {
            version,
            step: next,
            step_started_at: self.obs.now,
            last_analysis: None,
            completed_windows,
            canary_started_at,
        });
    }

    /// Starts the oldest startable pending version, promoting or failing
    /// the ones that do not need or may not take a rollout on the way.
    fn start_next(&mut self) {
        while self.state.candidate.is_none() {
            let Some(next) = pending(&self.state, self.obs.versions).find(|version| version.broken.is_none()) else {
                return;
            };
            let Some(stable) = self.state.stable.clone() else {
                let reason = "first version: nothing to compare with".to_owned();
                self.promote(&next.name, VersionPhase::Pending, Cause::Lifecycle, reason);
                continue;
            };
            if !next.ready {
                return;
            }
            if next.command == Some(Command::Promote) {
                self.promote(&next.name, VersionPhase::Pending, Cause::Command, "promoted by annotation".to_owned());
                continue;
            }
            if let Some(gate) = &self.policy.offline_gate {
                let stable_info = self.versions.get(stable.as_str()).copied();
                if let Err(reason) = offline_gate::check(gate, next, &stable, stable_info) {
                    self.finish(&next.name, VersionPhase::Pending, VersionPhase::Failed, Cause::Lifecycle, reason);
                    continue;
                }
            }
            let Some(first) = self.policy.steps.first() else {
                self.promote(&next.name, VersionPhase::Pending, Cause::Lifecycle, "the policy has no steps".to_owned());
                continue;
            };
            let reason = format!("rollout started: {}", step_label(self.policy, 0));
            self.record(&next.name, VersionPhase::Pending, step_phase(first), Cause::Lifecycle, reason);
            self.state.candidate = Some(CandidateState {
                version: next.name.clone(),
                step: 0,
                step_started_at: self.obs.now,
                last_analysis: None,
                completed_windows: Vec::new(),
                canary_started_at: canary_start(first, self.obs.now),
            });
        }
    }

    /// Drops finished versions that are no longer listed.
    fn forget_deleted(&mut self) {
        let versions = &self.versions;
        self.state.finished.retain(|name, _| versions.contains_key(name.as_str()));
    }

    /// Makes `name` stable, retiring the previous stable version.
    fn promote(&mut self, name: &str, from: VersionPhase, cause: Cause, reason: String) {
        if let Some(previous) = self.state.stable.replace(name.to_owned())
            && previous != name
        {
            let retired = format!("replaced by {name}");
            self.finish(&previous, VersionPhase::Stable, VersionPhase::Retired, Cause::Lifecycle, retired);
        }
        self.state.finished.remove(name);
        self.record(name, from, VersionPhase::Stable, cause, reason);
    }

    /// Ends a version's rollout in a terminal phase.
    fn finish(&mut self, name: &str, from: VersionPhase, to: VersionPhase, cause: Cause, reason: String) {
        let finished = FinishedVersion { phase: to, reason: reason.clone() };
        self.state.finished.insert(name.to_owned(), finished);
        self.record(name, from, to, cause, reason);
    }

    fn record(&mut self, version: &str, from: VersionPhase, to: VersionPhase, cause: Cause, reason: String) {
        let time = self.obs.now;
        self.transitions.push(HistoryEntry { time, version: version.to_owned(), from, to, cause, reason });
    }
}

/// Versions that are neither stable, candidate nor finished, oldest first.
/// The version [`Run::start_next`] waits for: next in line, not broken,
/// not ready, with a stable to protect and no candidate in flight.
fn starting<'v>(state: &RolloutState, versions: &'v [VersionInfo]) -> Option<&'v VersionInfo> {
    if state.stable.is_none() || state.candidate.is_some() {
        return None;
    }
    pending(state, versions).find(|version| version.broken.is_none()).filter(|version| !version.ready)
}

fn pending<'v>(state: &RolloutState, versions: &'v [VersionInfo]) -> impl Iterator<Item = &'v VersionInfo> {
    let mut waiting: Vec<&VersionInfo> = versions
        .iter()
        .filter(|version| {
            state.stable.as_deref() != Some(version.name.as_str())
                && state.candidate.as_ref().is_none_or(|candidate| candidate.version != version.name)
                && !state.finished.contains_key(&version.name)
        })
        .collect();
    waiting.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    waiting.into_iter()
}

/// The phase a candidate shows: that of its step (`Canary` once past the last).
pub fn candidate_phase(policy: &RolloutPolicy, candidate: &CandidateState) -> VersionPhase {
    policy.steps.get(candidate.step as usize).map_or(VersionPhase::Canary, step_phase)
}

/// `now` when `step` is a canary step: the candidate serves users from now on.
fn canary_start(step: &Step, now: Timestamp) -> Option<Timestamp> {
    matches!(step, Step::Canary { .. }).then_some(now)
}

fn step_phase(step: &Step) -> VersionPhase {
    match step {
        Step::Shadow { .. } => VersionPhase::Shadow,
        Step::Canary { .. } => VersionPhase::Canary,
    }
}

/// "step 2/4 (canary 5%)", for reasons and events.
pub fn step_label(policy: &RolloutPolicy, index: u32) -> String {
    let total = policy.steps.len();
    let what = match policy.steps.get(index as usize) {
        Some(Step::Shadow { duration }) => format!("shadow for {}", human(*duration)),
        Some(Step::Canary { weight, .. }) => format!("canary {weight}%"),
        None => "past the last step".to_owned(),
    };
    format!("step {}/{total} ({what})", index + 1)
}

/// Time since `start`, zero when the clock is behind it.
fn elapsed_since(start: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(start)).unwrap_or(Duration::ZERO)
}

pub fn human(duration: Duration) -> String {
    jiff::SignedDuration::try_from(duration).map_or_else(|_| format!("{}s", duration.as_secs()), |d| format!("{d:#}"))
}
