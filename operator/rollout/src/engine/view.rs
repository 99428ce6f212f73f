//! What a decision shows the world, derived from the state alone: the
//! routing table, each version's status and when to look again.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{
    ACTIVE_REQUEUE, Command, Decision, HistoryEntry, IDLE_REQUEUE, Observation, RolloutState, VersionPhase,
    VersionStatus, candidate_phase, elapsed_since, pending, starting, step_label,
};
use crate::policy::{RolloutPolicy, Step};
use reco_contracts::routing::{RoutedVersion, RoutingTable};

/// Never requeue sooner than this, even when a timer is due.
const MIN_REQUEUE: Duration = Duration::from_secs(1);

pub(super) fn decision(
    policy: &RolloutPolicy,
    obs: &Observation<'_>,
    state: RolloutState,
    transitions: Vec<HistoryEntry>,
) -> Decision {
    let routing = routing(policy, obs, &state);
    Decision {
        starting: starting(&state, obs.versions).map(|version| version.name.clone()),
        versions: statuses(policy, obs, &state, &routing),
        requeue_after: requeue_after(policy, obs, &state),
        routing,
        state,
        transitions,
    }
}

/// Stable serves whatever the candidate does not: the table always holds
/// the stable version (weight 0 only under a 100% canary step) and its
/// weights sum to 100. The candidate comes first, so it takes the low hash
/// buckets and keeps its users as its weight grows. Empty without a stable.
fn routing(policy: &RolloutPolicy, obs: &Observation<'_>, state: &RolloutState) -> RoutingTable {
    let mut table = RoutingTable {
        pipeline: obs.pipeline.to_owned(),
        salt: obs.salt.to_owned(),
        versions: Vec::new(),
        shadow: None,
    };
    let Some(stable) = &state.stable else {
        return table;
    };
    let mut stable_weight = 100;
    if let Some(candidate) = &state.candidate {
        match policy.steps.get(candidate.step as usize) {
            Some(Step::Shadow { .. }) => table.shadow = Some(candidate.version.clone()),
            Some(Step::Canary { weight, .. }) => {
                let weight = (*weight).min(100);
                stable_weight -= weight;
                table.versions.push(RoutedVersion { name: candidate.version.clone(), weight });
            }
            // Past the last step (the policy lost steps while paused): it
            // is promoted by the next call, it does not serve meanwhile.
            None => {}
        }
    }
    table.versions.push(RoutedVersion { name: stable.clone(), weight: stable_weight });
    table
}

/// A status for every observed version.
fn statuses(
    policy: &RolloutPolicy,
    obs: &Observation<'_>,
    state: &RolloutState,
    routing: &RoutingTable,
) -> BTreeMap<String, VersionStatus> {
    let paused = if obs.paused { "rollout paused; " } else { "" };
    let weight_of =
        |name: &str| routing.versions.iter().find(|routed| routed.name == name).map_or(0, |routed| routed.weight);
    let mut statuses: BTreeMap<String, VersionStatus> = obs
        .versions
        .iter()
        .map(|version| {
            let name = version.name.as_str();
            let (phase, reason) = if state.stable.as_deref() == Some(name) {
                let mut reason = "serving as stable".to_owned();
                if let Some(broken) = &version.broken {
                    reason.push_str(&format!(
                        "; broken: {broken} (kept serving: stable is only replaced by a promotion)"
                    ));
                }
                if version.command == Some(Command::Abort) {
                    reason.push_str("; abort ignored: promote another version to replace stable");
                }
                (VersionPhase::Stable, reason)
            } else if let Some(candidate) = state.candidate.as_ref().filter(|candidate| candidate.version == name) {
                let analysis = candidate
                    .last_analysis
                    .as_ref()
                    .map_or("waiting for its first analysis", |report| report.message.as_str());
                let reason = format!("{paused}{}: {analysis}", step_label(policy, candidate.step));
                (candidate_phase(policy, candidate), reason)
            } else if let Some(finished) = state.finished.get(name) {
                (finished.phase, finished.reason.clone())
            } else {
                (VersionPhase::Pending, String::new())
            };
            let status = VersionStatus { phase, weight: weight_of(name), reason };
            (version.name.clone(), status)
        })
        .collect();
    let waiting_for_pods = starting(state, obs.versions).map(|version| version.name.as_str());
    for (position, version) in pending(state, obs.versions).enumerate() {
        let reason = match (&version.broken, &state.candidate) {
            (Some(broken), _) => format!("{paused}waiting until fixed: {broken}"),
            (None, None) if waiting_for_pods == Some(version.name.as_str()) => {
                format!("{paused}next: waiting for its pods to be ready")
            }
            (None, Some(candidate)) => format!("{paused}queued ({}) behind {}", position + 1, candidate.version),
            (None, None) => format!("{paused}queued ({})", position + 1),
        };
        let promote =
            if version.command == Some(Command::Promote) { "; promoted by annotation when its turn comes" } else { "" };
        if let Some(status) = statuses.get_mut(&version.name) {
            status.reason = format!("{reason}{promote}");
        }
    }
    statuses
}

/// Soon while a candidate is in flight (sooner if its step timer is due) or
/// the next one waits for its pods, rarely when idle or paused.
fn requeue_after(policy: &RolloutPolicy, obs: &Observation<'_>, state: &RolloutState) -> Duration {
    let Some(candidate) = state.candidate.as_ref().filter(|_| !obs.paused) else {
        let waiting = !obs.paused && starting(state, obs.versions).is_some();
        return if waiting { ACTIVE_REQUEUE } else { IDLE_REQUEUE };
    };
    let timer = match policy.steps.get(candidate.step as usize) {
        Some(Step::Shadow { duration }) => *duration,
        Some(Step::Canary { max_duration, .. }) => *max_duration,
        None => Duration::ZERO,
    };
    let left = timer.saturating_sub(elapsed_since(candidate.step_started_at, obs.now));
    ACTIVE_REQUEUE.min(left).max(MIN_REQUEUE)
}
