//! The engine's view of the cluster, derived from the watch caches: each
//! ModelVersion as the engine sees it (broken when its pods cannot start,
//! commanded through annotations), and which versions need pods after a
//! decision, or keep them a while longer. Pure: the controller passes what
//! its caches hold and the time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use reco_api::{ABORT_ANNOTATION, ModelVersion, PROMOTE_ANNOTATION};
use reco_rollout::engine::HistoryEntry;
use reco_rollout::{Command, Decision, VersionInfo, VersionPhase};

use crate::validation;

/// The engine's view of a ModelVersion: broken when its name cannot name its
/// objects or its pods cannot start (the engine never starts a broken
/// version), commanded through the promote/abort annotations.
pub fn version_info(v: &ModelVersion, deployments: &[Arc<Deployment>]) -> VersionInfo {
    let annotations = v.annotations();
    let command = if annotations.get(ABORT_ANNOTATION).is_some_and(|a| a == "true") {
        Some(Command::Abort)
    } else if annotations.get(PROMOTE_ANNOTATION).is_some_and(|a| a == "true") {
        Some(Command::Promote)
    } else {
        None
    };
    VersionInfo {
        name: v.name_any(),
        created: v.metadata.creation_timestamp.as_ref().map_or(Timestamp::UNIX_EPOCH, |t| t.0),
        offline_metrics: v.spec.offline_metrics.clone(),
        broken: validation::version_name_problem(&v.spec.pipeline, &v.name_any())
            .or_else(|| deployment_failure(&v.name_any(), deployments)),
        ready: pods_ready(&v.name_any(), deployments),
        command,
    }
}

/// Whether the version has Deployments and each has every pod of its
/// current template ready (as their status says).
fn pods_ready(version: &str, deployments: &[Arc<Deployment>]) -> bool {
    let mut theirs = deployments
        .iter()
        .filter(|d| d.labels().get(reco_api::VERSION_LABEL).map(String::as_str) == Some(version))
        .peekable();
    theirs.peek().is_some()
        && theirs.all(|d| {
            let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            d.status.as_ref().is_some_and(|s| {
                s.observed_generation >= d.metadata.generation && s.ready_replicas.unwrap_or(0) >= wanted
            })
        })
}

/// Why a version's pods cannot run: a Deployment that exceeded its progress
/// deadline (image that cannot be pulled, artifact that cannot be loaded).
fn deployment_failure(version: &str, deployments: &[Arc<Deployment>]) -> Option<String> {
    deployments
        .iter()
        .filter(|d| d.labels().get(reco_api::VERSION_LABEL).map(String::as_str) == Some(version))
        .find_map(|d| {
            let conditions = d.status.as_ref()?.conditions.as_ref()?;
            let stuck = conditions.iter().find(|c| {
                c.type_ == "Progressing"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            })?;
            Some(format!(
                "Deployment {} did not become available: {}",
                d.name_any(),
                stuck.message.as_deref().unwrap_or("progress deadline exceeded")
            ))
        })
}

/// Versions that need retrieval and ranking pods: those in the routing table,
/// the shadow, the candidate, and the one next in line (whose pods start
/// before it gets traffic).
pub fn serving_versions(decision: &Decision) -> BTreeSet<String> {
    let mut serving: BTreeSet<String> = decision.routing.versions.iter().map(|v| v.name.clone()).collect();
    serving.extend(decision.starting.clone());
    serving.extend(decision.routing.shadow.clone());
    serving.extend(decision.state.candidate.as_ref().map(|c| c.version.clone()));
    serving.extend(decision.state.stable.clone());
    serving
}

/// Versions that no longer serve but keep their objects, each with the time
/// they may go: `delay` after the transition that took it out of the routing
/// (from shadow, canary or stable to an end). Gateways route by the routing
/// they last read, which reaches them through the kubelet a while after it
/// is written, so a version's Services must outlive the routing naming it.
/// A version whose transition has left the bounded history left long ago.
pub fn draining_versions(
    history: &[HistoryEntry],
    serving: &BTreeSet<String>,
    delay: Duration,
    now: Timestamp,
) -> BTreeMap<String, Timestamp> {
    let routed = |phase| matches!(phase, VersionPhase::Shadow | VersionPhase::Canary | VersionPhase::Stable);
    let ended = |phase| matches!(phase, VersionPhase::RolledBack | VersionPhase::Failed | VersionPhase::Retired);
    let mut draining = BTreeMap::new();
    for entry in history.iter().filter(|e| routed(e.from) && ended(e.to) && !serving.contains(&e.version)) {
        let until = entry.time.saturating_add(delay).unwrap_or(Timestamp::MAX);
        draining.insert(entry.version.clone(), until);
    }
    draining.retain(|_, until| *until > now);
    draining
}

/// How long until the first draining version may go, to look again then.
pub fn next_drain(draining: &BTreeMap<String, Timestamp>, now: Timestamp) -> Option<Duration> {
    let first = draining.values().min()?;
    Some(Duration::try_from(first.duration_since(now)).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reco_rollout::engine::Cause;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    fn left(version: &str, from: VersionPhase, to: VersionPhase, seconds: i64) -> HistoryEntry {
        HistoryEntry {
            time: at(seconds),
            version: version.to_owned(),
            from,
            to,
            cause: Cause::Lifecycle,
            reason: String::new(),
        }
    }

    #[test]
    fn versions_keep_their_objects_for_the_delay_after_leaving_the_routing() {
        use VersionPhase::*;
        let history = [
            left("v1", Pending, Stable, 0),
            left("v2", Shadow, RolledBack, 1000),
            left("v3", Canary, Failed, 1100),
            left("v1", Stable, Retired, 1150),
            left("v4", Pending, Failed, 1160),
            left("v5", Canary, Stable, 1150),
        ];
        let serving = BTreeSet::from(["v5".to_owned()]);
        let delay = Duration::from_secs(120);
        let draining = draining_versions(&history, &serving, delay, at(1200));
        // v2 left 200 s ago: gone; v4 never served; v5 serves.
        assert_eq!(draining, BTreeMap::from([("v3".to_owned(), at(1220)), ("v1".to_owned(), at(1270))]));
        assert_eq!(next_drain(&draining, at(1200)), Some(Duration::from_secs(20)));
        // At its deadline a version goes.
        assert!(!draining_versions(&history, &serving, delay, at(1220)).contains_key("v3"));
        assert!(draining_versions(&history, &serving, Duration::ZERO, at(1150)).is_empty(), "0s: at once");
        // A version that serves again (a stable that was replaced then promoted back) is not draining.
        let back = BTreeSet::from(["v1".to_owned(), "v5".to_owned()]);
        assert!(!draining_versions(&history, &back, delay, at(1200)).contains_key("v1"));
        assert_eq!(next_drain(&BTreeMap::new(), at(0)), None);
    }
}
