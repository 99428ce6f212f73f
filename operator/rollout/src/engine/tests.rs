//! Unit tests of the state machine, one table row per rule.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::*;
use crate::analysis::metrics_unavailable;
use crate::policy::{AnalysisPolicy, OfflineGate};

use VersionPhase::{Canary, Failed, Pending, Retired, RolledBack, Shadow, Stable};

fn at(minutes: i64) -> Timestamp {
    Timestamp::UNIX_EPOCH + SignedDuration::from_mins(minutes)
}

fn policy() -> RolloutPolicy {
    RolloutPolicy {
        steps: vec![
            Step::Shadow { duration: Duration::from_secs(600) },
            Step::Canary { weight: 10, min_impressions: 1_000, max_duration: Duration::from_secs(3_600) },
            Step::Canary { weight: 50, min_impressions: 2_000, max_duration: Duration::from_secs(3_600) },
        ],
        analysis: AnalysisPolicy::recommended(),
        offline_gate: None,
    }
}

fn version(name: &str, created_minute: i64) -> VersionInfo {
    VersionInfo {
        name: name.to_owned(),
        created: at(created_minute),
        offline_metrics: BTreeMap::from([("ndcg@10".to_owned(), 0.30)]),
        broken: None,
        ready: true,
        command: None,
    }
}

fn broken(mut version: VersionInfo) -> VersionInfo {
    version.broken = Some("artifact missing".to_owned());
    version
}

fn unready(mut version: VersionInfo) -> VersionInfo {
    version.ready = false;
    version
}

fn commanded(mut version: VersionInfo, command: Command) -> VersionInfo {
    version.command = Some(command);
    version
}

fn report(verdict: AnalysisVerdict, canary_impressions: u64) -> AnalysisReport {
    AnalysisReport {
        stable_impressions: 9 * canary_impressions,
        stable_clicks: 9 * canary_impressions / 20,
        stable_ctr: 0.05,
        canary_impressions,
        canary_clicks: canary_impressions / 20,
        canary_ctr: 0.05,
        verdict,
        message: format!("verdict {verdict:?}"),
        estimate: None,
        impressions_to_decide: None,
    }
}

fn stable(name: &str) -> RolloutState {
    RolloutState { stable: Some(name.to_owned()), ..RolloutState::default() }
}

fn rolling(stable_name: &str, candidate: &str, step: u32, started_minute: i64) -> RolloutState {
    RolloutState {
        candidate: Some(CandidateState {
            version: candidate.to_owned(),
            step,
            step_started_at: at(started_minute),
            last_analysis: None,
            completed_windows: Vec::new(),
            canary_started_at: None,
        }),
        ..stable(stable_name)
    }
}

/// One call of `decide` and what it must produce.
struct Case {
    name: &'static str,
    policy: RolloutPolicy,
    state: RolloutState,
    versions: Vec<VersionInfo>,
    analysis: Option<AnalysisReport>,
    paused: bool,
    now: i64,
    stable: Option<&'static str>,
    candidate: Option<(&'static str, u32)>,
    phases: Vec<(&'static str, VersionPhase)>,
    routing: Vec<(&'static str, u8)>,
    shadow: Option<&'static str>,
    /// A version whose status reason must contain a fragment.
    reason: Option<(&'static str, &'static str)>,
}

impl Default for Case {
    fn default() -> Self {
        Case {
            name: "",
            policy: policy(),
            state: RolloutState::default(),
            versions: Vec::new(),
            analysis: None,
            paused: false,
            now: 100,
            stable: None,
            candidate: None,
            phases: Vec::new(),
            routing: Vec::new(),
            shadow: None,
            reason: None,
        }
    }
}

fn gated() -> RolloutPolicy {
    RolloutPolicy { offline_gate: Some(OfflineGate { metric: "ndcg@10".to_owned(), max_regression: 0.05 }), ..policy() }
}

fn with_metric(mut version: VersionInfo, value: Option<f64>) -> VersionInfo {
    version.offline_metrics = value.map(|value| ("ndcg@10".to_owned(), value)).into_iter().collect();
    version
}

fn cases() -> Vec<Case> {
    use AnalysisVerdict::{Fail, Inconclusive, Pass, SampleRatioMismatch};
    let on_timeout_proceed = RolloutPolicy {
        analysis: AnalysisPolicy { on_timeout: OnTimeout::Proceed, ..AnalysisPolicy::recommended() },
        ..policy()
    };
    let full_canary = RolloutPolicy {
        steps: vec![Step::Canary { weight: 100, min_impressions: 0, max_duration: Duration::from_secs(3_600) }],
        ..policy()
    };
    vec![
        Case {
            name: "bootstrap: the oldest version becomes stable, the next starts",
            versions: vec![version("v2", 2), version("v1", 1)],
            stable: Some("v1"),
            candidate: Some(("v2", 0)),
            phases: vec![("v1", Stable), ("v2", Shadow)],
            routing: vec![("v1", 100)],
            shadow: Some("v2"),
            ..Case::default()
        },
        Case {
            name: "bootstrap skips a broken version, which waits",
            versions: vec![broken(version("v1", 1)), version("v2", 2)],
            stable: Some("v2"),
            phases: vec![("v1", Pending), ("v2", Stable)],
            routing: vec![("v2", 100)],
            reason: Some(("v1", "waiting until fixed: artifact missing")),
            ..Case::default()
        },
        Case {
            name: "the first version is promoted before its pods are ready: nothing else serves",
            versions: vec![unready(version("v1", 1))],
            stable: Some("v1"),
            phases: vec![("v1", Stable)],
            routing: vec![("v1", 100)],
            ..Case::default()
        },
        Case {
            name: "the next version waits for its pods, and the ones behind it wait too",
            state: stable("v1"),
            versions: vec![version("v1", 1), unready(version("v2", 2)), version("v3", 3)],
            stable: Some("v1"),
            phases: vec![("v1", Stable), ("v2", Pending), ("v3", Pending)],
            routing: vec![("v1", 100)],
            reason: Some(("v2", "waiting for its pods to be ready")),
            ..Case::default()
        },
        Case {
            name: "a promote annotation waits for the pods too",
            state: stable("v1"),
            versions: vec![version("v1", 1), unready(commanded(version("v2", 2), Command::Promote))],
            stable: Some("v1"),
            phases: vec![("v1", Stable), ("v2", Pending)],
            routing: vec![("v1", 100)],
            ..Case::default()
        },
        Case {
            name: "pending versions start by creation time, then name",
            state: stable("v1"),
            versions: vec![version("v1", 1), version("v4", 3), version("v3", 2), version("v2", 3)],
            stable: Some("v1"),
            candidate: Some(("v3", 0)),
            phases: vec![("v1", Stable), ("v2", Pending), ("v3", Shadow), ("v4", Pending)],
            routing: vec![("v1", 100)],
            shadow: Some("v3"),
            reason: Some(("v2", "queued (1) behind v3")),
            ..Case::default()
        },
        Case {
            name: "offline gate fails the candidate and the next one starts",
            policy: gated(),
            state: stable("v1"),
            versions: vec![version("v1", 1), with_metric(version("v2", 2), Some(0.2)), version("v3", 3)],
            stable: Some("v1"),
            candidate: Some(("v3", 0)),
            phases: vec![("v2", Failed), ("v3", Shadow)],
            routing: vec![("v1", 100)],
            shadow: Some("v3"),
            reason: Some(("v2", "offline gate: ndcg@10 0.2 is below 0.2850")),
            ..Case::default()
        },
        Case {
            name: "offline gate fails a candidate without the metric",
            policy: gated(),
            state: stable("v1"),
            versions: vec![version("v1", 1), with_metric(version("v2", 2), None)],
            stable: Some("v1"),
            phases: vec![("v2", Failed)],
            routing: vec![("v1", 100)],
            reason: Some(("v2", "v2 has no offline metric \"ndcg@10\"")),
            ..Case::default()
        },
        Case {
            name: "offline gate fails when stable lacks the metric",
            policy: gated(),
            state: stable("v1"),
            versions: vec![with_metric(version("v1", 1), None), version("v2", 2)],
            stable: Some("v1"),
            phases: vec![("v2", Failed)],
            routing: vec![("v1", 100)],
            reason: Some(("v2", "stable version v1 has no offline metric")),
            ..Case::default()
        },
        Case {
            name: "offline gate passes within the allowed regression",
            policy: gated(),
            state: stable("v1"),
            versions: vec![version("v1", 1), with_metric(version("v2", 2), Some(0.29))],
            stable: Some("v1"),
            candidate: Some(("v2", 0)),
            phases: vec![("v2", Shadow)],
            routing: vec![("v1", 100)],
            shadow: Some("v2"),
            ..Case::default()
        },
        Case {
            name: "shadow holds before its duration",
            state: rolling("v1", "v2", 0, 95),
            versions: vec![version("v1", 1), version("v2", 2)],
            analysis: Some(report(Pass, 0)),
            stable: Some("v1"),
            candidate: Some(("v2", 0)),
            phases: vec![("v2", Shadow)],
            routing: vec![("v1", 100)],
            shadow: Some("v2"),
            ..Case::default()
        },
        Case {
            name: "shadow passes after its duration, even undecided",
            state: rolling("v1", "v2", 0, 90),
            versions: vec![version("v1", 1), version("v2", 2)],
            analysis: Some(report(Inconclusive, 0)),
            stable: Some("v1"),
            candidate: Some(("v2", 1)),
            phases: vec![("v2", Canary)],
            routing: vec![("v2", 10), ("v1", 90)],
            ..Case::default()
        },
        Case {
            name: "shadow guardrail failure rolls back at once",
            state: rolling("v1", "v2", 0, 99),
            versions: vec![version("v1", 1), version("v2", 2)],
            analysis: Some(report(Fail, 0)),
            stable: Some("v1"),
            phases: vec![("v2", RolledBack)],
            routing: vec![("v1", 100)],
            reason: Some(("v2", "step 1/3 (shadow for 10m) failed: verdict Fail")),
            ..Case::default()
        },
        Case {
            name: "canary passes with enough impressions",
            state: rolling("v1", "v2", 1, 90),
            versions: vec![version("v1", 1), version("v2", 2)],
            analysis: Some(report(Pass, 1_000)),
            stable: Some("v1"),
            candidate: Some(("v2", 2)),
            phases: vec![("v2", Canary)],
            routing: vec![("v2", 50), ("v1", 50)],
            ..Case::default()
        },
        Case {
            name: "canary pass without the minimum impressions holds",
            state: rolling("v1", "v2", 1, 90),
            versions: vec![version("v1", 1), version("v2", 2)],
            analysis: Some(report(Pass, 999)),
            stable: Some("v1"),
            candidate: Some(("v2", 1)),
            phases: vec![("v2", Canary)],
            routing: vec![("v2", 10), ("v1", 90)],
            ..Case::default()
        },
        Case {
            name: "inconclusive canary holds its weight",
            state: rolling("v1", "v2", 1, 90),
            versions: vec![version("v1", 1), version("v2", 2)],
            analysis: Some(report(Inconclusive, 50_000)),
            stable: Some("v1"),
            candidate: Some(("v2", 1)),
            phases: vec![("v2", Canary)],
            routing: vec![("v2", 10), ("v1", 90)],
            reason: Some(("v2", "step 2/3 (canary 10%): verdict Inconclusive")),
            ..Case::default()
        },
        Case {
            name: "unavailable metrics hold the weight",
            state: rolling("v1", "v2", 1, 90),
            versions: vec![version("v1", 1), version("v2", 2)],
            analysis: Some(metrics_unavailable("prometheus down")),
            stable: Some("v1"),
            candidate: Some(("v2", 1)),
            routing: vec![("v2", 10), ("v1", 90)],
            reason: Some(("v2", "metrics unavailable: prometheus down")),
            ..Case::default()
        },
        Case {
            name: "no analysis holds the weight",
            state: rolling("v1", "v2", 1, 90),
            versions: vec![version("v1", 1), version("v2", 2)],
            stable: Some("v1"),
            candidate: Some(("v2", 1)),
            routing: vec![("v2", 10), ("v1", 90)],
            reason: Some(("v2", "waiting for its first analysis")),
            ..Case::default()
        },
        Case {
            name: "canary failure rolls back at once",
            state: rolling("v1", "v2", 2, 90),
            versions: vec![version("v1", 1), version("v2", 2)],
            analysis: Some(report(Fail, 10)),
            stable: Some("v1"),
            phases: vec![("v1", Stable), ("v2", RolledBack)],
            routing: vec![("v1", 100)],
            reason: Some(("v2", "step 3/3 (canary 50%) failed: verdict Fail")),
            ..Case::default()
        },
        Case {
            name: "canary undecided at max duration rolls back",
            state: rolling("v1", "v2", 1, 40),
            versions: vec![version("v1", 1), version("v2", 2)],
            analysis: Some(report(Inconclusive, 50_000)),
            stable: Some("v1"),
            phases: vec![("v2", RolledBack)],
            routing: vec![("v1", 100)],
            reason: Some(("v2", "undecided after 1h")),
            ..Case::default()
        },
        Case {
            name: "a sample ratio mismatch holds the canary past its max duration, never deciding",
            policy: on_timeout_proceed.clone(),
            state: rolling("v1", "v2", 1, 40),
            versions: vec![version("v1", 1), version("v2", 2)],
            analysis: Some(report(SampleRatioMismatch, 50_000)),
            stable: Some("v1"),
            candidate: Some(("v2", 1)),
            phases: vec![("v2", Canary)],
            routing: vec![("v2", 10), ("v1", 90)],
            ..Case::default()
        },
        Case {
            name: "canary undecided at max duration proceeds when the policy says so",
            policy: on_timeout_proceed.clone(),
            state: rolling("v1", "v2", 1, 40),
            versions: vec![version("v1", 1), version("v2", 2)],
            analysis: Some(report(Inconclusive, 50_000)),
            stable: Some("v1"),
            candidate: Some(("v2", 2)),
            routing: vec![("v2", 50), ("v1", 50)],
            ..Case::default()
        },
        Case {
            name: "canary undecided at max duration does not proceed when no metrics were ever read",
            policy: on_timeout_proceed.clone(),
            state: rolling("v1", "v2", 1, 40),
            versions: vec![version("v1", 1), version("v2", 2)],
            analysis: Some(metrics_unavailable("gateway unreachable")),
            stable: Some("v1"),
            phases: vec![("v2", RolledBack)],
            routing: vec![("v1", 100)],
            reason: Some(("v2", "no impressions were ever read")),
            ..Case::default()
        },
        Case {
            name: "canary at max duration with no look at all does not proceed either",
            policy: on_timeout_proceed,
            state: rolling("v1", "v2", 1, 40),
            versions: vec![version("v1", 1), version("v2", 2)],
            analysis: None,
            stable: Some("v1"),
            phases: vec![("v2", RolledBack)],
            routing: vec![("v1", 100)],
            reason: Some(("v2", "no impressions were ever read")),
            ..Case::default()
        },
        Case {
            name: "last step passed: promoted, old stable retired",
            state: rolling("v1", "v2", 2, 90),
            versions: vec![version("v1", 1), version("v2", 2)],
            analysis: Some(report(Pass, 2_000)),
            stable: Some("v2"),
            phases: vec![("v1", Retired), ("v2", Stable)],
            routing: vec![("v2", 100)],
            reason: Some(("v1", "replaced by v2")),
            ..Case::default()
        },
        Case {
            name: "promote on the candidate promotes at once",
            state: rolling("v1", "v2", 0, 99),
            versions: vec![version("v1", 1), commanded(version("v2", 2), Command::Promote)],
            stable: Some("v2"),
            phases: vec![("v1", Retired), ("v2", Stable)],
            routing: vec![("v2", 100)],
            ..Case::default()
        },
        Case {
            name: "abort on the candidate rolls back at once, even on a passing step",
            state: rolling("v1", "v2", 1, 90),
            versions: vec![version("v1", 1), commanded(version("v2", 2), Command::Abort)],
            analysis: Some(report(Pass, 5_000)),
            stable: Some("v1"),
            phases: vec![("v2", RolledBack)],
            routing: vec![("v1", 100)],
            reason: Some(("v2", "aborted by annotation")),
            ..Case::default()
        },
        Case {
            name: "abort on a pending version ends it; the queue goes on",
            state: stable("v1"),
            versions: vec![version("v1", 1), commanded(version("v2", 2), Command::Abort), version("v3", 3)],
            stable: Some("v1"),
            candidate: Some(("v3", 0)),
            phases: vec![("v2", RolledBack), ("v3", Shadow)],
            routing: vec![("v1", 100)],
            shadow: Some("v3"),
            reason: Some(("v2", "aborted by annotation before its rollout started")),
            ..Case::default()
        },
        Case {
            name: "promote on a pending version whose turn it is skips gate and steps",
            policy: gated(),
            state: stable("v1"),
            versions: vec![version("v1", 1), commanded(with_metric(version("v2", 2), None), Command::Promote)],
            stable: Some("v2"),
            phases: vec![("v1", Retired), ("v2", Stable)],
            routing: vec![("v2", 100)],
            ..Case::default()
        },
        Case {
            name: "promote on a pending version waits for its turn",
            state: rolling("v1", "v2", 1, 90),
            versions: vec![version("v1", 1), version("v2", 2), commanded(version("v3", 3), Command::Promote)],
            stable: Some("v1"),
            candidate: Some(("v2", 1)),
            phases: vec![("v3", Pending)],
            routing: vec![("v2", 10), ("v1", 90)],
            reason: Some(("v3", "promoted by annotation when its turn comes")),
            ..Case::default()
        },
        Case {
            name: "a broken candidate fails",
            state: rolling("v1", "v2", 1, 90),
            versions: vec![version("v1", 1), broken(version("v2", 2))],
            analysis: Some(report(Pass, 5_000)),
            stable: Some("v1"),
            phases: vec![("v2", Failed)],
            routing: vec![("v1", 100)],
            reason: Some(("v2", "broken: artifact missing")),
            ..Case::default()
        },
        Case {
            name: "a broken stable keeps serving and says so",
            state: rolling("v1", "v2", 1, 90),
            versions: vec![broken(version("v1", 1)), version("v2", 2)],
            stable: Some("v1"),
            candidate: Some(("v2", 1)),
            phases: vec![("v1", Stable)],
            routing: vec![("v2", 10), ("v1", 90)],
            reason: Some(("v1", "broken: artifact missing (kept serving")),
            ..Case::default()
        },
        Case {
            name: "abort on stable is ignored",
            state: stable("v1"),
            versions: vec![commanded(version("v1", 1), Command::Abort)],
            stable: Some("v1"),
            phases: vec![("v1", Stable)],
            routing: vec![("v1", 100)],
            reason: Some(("v1", "abort ignored")),
            ..Case::default()
        },
        Case {
            name: "a deleted candidate is dropped, routing back to stable",
            state: rolling("v1", "v2", 2, 90),
            versions: vec![version("v1", 1)],
            stable: Some("v1"),
            phases: vec![("v1", Stable)],
            routing: vec![("v1", 100)],
            ..Case::default()
        },
        Case {
            name: "a deleted stable keeps serving until a promotion",
            state: rolling("v1", "v2", 1, 90),
            versions: vec![version("v2", 2)],
            analysis: Some(report(Inconclusive, 10)),
            stable: Some("v1"),
            candidate: Some(("v2", 1)),
            phases: vec![("v2", Canary)],
            routing: vec![("v2", 10), ("v1", 90)],
            ..Case::default()
        },
        Case {
            name: "paused: a failing canary is frozen",
            state: rolling("v1", "v2", 1, 90),
            versions: vec![version("v1", 1), commanded(version("v2", 2), Command::Abort), version("v3", 3)],
            analysis: Some(report(Fail, 10)),
            paused: true,
            stable: Some("v1"),
            candidate: Some(("v2", 1)),
            phases: vec![("v2", Canary), ("v3", Pending)],
            routing: vec![("v2", 10), ("v1", 90)],
            reason: Some(("v2", "rollout paused")),
            ..Case::default()
        },
        Case {
            name: "paused: the first version waits too",
            versions: vec![version("v1", 1)],
            paused: true,
            phases: vec![("v1", Pending)],
            ..Case::default()
        },
        Case {
            name: "a 100% canary leaves stable in the table at weight 0",
            policy: full_canary,
            state: stable("v1"),
            versions: vec![version("v1", 1), version("v2", 2)],
            stable: Some("v1"),
            candidate: Some(("v2", 0)),
            routing: vec![("v2", 100), ("v1", 0)],
            ..Case::default()
        },
        Case {
            name: "a policy without steps promotes after the gate",
            policy: RolloutPolicy { steps: Vec::new(), ..policy() },
            state: stable("v1"),
            versions: vec![version("v1", 1), version("v2", 2)],
            stable: Some("v2"),
            phases: vec![("v1", Retired), ("v2", Stable)],
            routing: vec![("v2", 100)],
            ..Case::default()
        },
        Case {
            name: "a candidate past the policy's last step is promoted",
            state: rolling("v1", "v2", 7, 90),
            versions: vec![version("v1", 1), version("v2", 2)],
            stable: Some("v2"),
            phases: vec![("v2", Stable)],
            routing: vec![("v2", 100)],
            ..Case::default()
        },
    ]
}

fn observe<'a>(case: &'a Case) -> Observation<'a> {
    Observation {
        pipeline: "home",
        salt: "salt",
        versions: &case.versions,
        analysis: case.analysis.as_ref(),
        paused: case.paused,
        now: at(case.now),
    }
}

#[test]
fn decide_follows_the_rules() {
    for case in cases() {
        let name = case.name;
        let decision = decide(&case.policy, &case.state, &observe(&case));
        assert_eq!(decision.state.stable.as_deref(), case.stable, "{name}: stable");
        let candidate = decision.state.candidate.as_ref().map(|c| (c.version.as_str(), c.step));
        assert_eq!(candidate, case.candidate, "{name}: candidate");
        for (version, phase) in &case.phases {
            assert_eq!(decision.versions[*version].phase, *phase, "{name}: phase of {version}");
        }
        let routing: Vec<(&str, u8)> = decision.routing.versions.iter().map(|v| (v.name.as_str(), v.weight)).collect();
        assert_eq!(routing, case.routing, "{name}: routing");
        assert_eq!(decision.routing.shadow.as_deref(), case.shadow, "{name}: shadow");
        if let Some((version, fragment)) = case.reason {
            let reason = &decision.versions[version].reason;
            assert!(reason.contains(fragment), "{name}: reason of {version} {reason:?} lacks {fragment:?}");
        }
        assert_eq!(decision.versions.len(), case.versions.len(), "{name}: a status per version");
        for (version, status) in &decision.versions {
            let routed = decision.routing.versions.iter().find(|v| &v.name == version).map_or(0, |v| v.weight);
            assert_eq!(status.weight, routed, "{name}: weight of {version}");
        }
        if case.paused {
            assert_eq!(decision.state, case.state, "{name}: paused state");
            assert!(decision.transitions.is_empty(), "{name}: paused transitions");
        }
        assert_eq!(decision.state.history.len(), decision.transitions.len().min(HISTORY_LIMIT), "{name}: history");
    }
}

#[test]
fn the_version_waiting_for_its_pods_is_named_for_the_controller() {
    let mut versions = vec![version("v1", 1), unready(version("v2", 2))];
    let obs = |versions: &[VersionInfo]| {
        decide(&policy(), &stable("v1"), &Observation { versions, ..observe(&Case::default()) })
    };
    let waiting = obs(&versions);
    assert_eq!(waiting.starting.as_deref(), Some("v2"));
    assert!(waiting.transitions.is_empty());
    assert_eq!(waiting.requeue_after, ACTIVE_REQUEUE, "looks again soon, not at the idle period");
    versions[1].ready = true;
    let started = obs(&versions);
    assert_eq!(started.starting, None);
    assert_eq!(started.routing.shadow.as_deref(), Some("v2"), "ready: its shadow step starts");
}

#[test]
fn transitions_name_each_phase_change() {
    let versions = [version("v1", 1), version("v2", 2)];
    let state = rolling("v1", "v2", 2, 90);
    let analysis = report(AnalysisVerdict::Pass, 2_000);
    let obs = Observation {
        pipeline: "home",
        salt: "salt",
        versions: &versions,
        analysis: Some(&analysis),
        paused: false,
        now: at(100),
    };
    let decision = decide(&policy(), &state, &obs);
    let changes: Vec<(&str, VersionPhase, VersionPhase)> =
        decision.transitions.iter().map(|t| (t.version.as_str(), t.from, t.to)).collect();
    assert_eq!(changes, [("v1", Stable, Retired), ("v2", Canary, Stable)]);
    assert!(decision.transitions.iter().all(|t| t.time == at(100)));
    assert!(decision.transitions[1].reason.contains("all 3 steps passed"), "{:?}", decision.transitions[1]);
}

#[test]
fn passing_a_canary_step_keeps_its_counts_for_the_next() {
    let versions = [version("v1", 1), version("v2", 2)];
    let analysis = report(AnalysisVerdict::Pass, 1_000);
    let obs = Observation {
        pipeline: "home",
        salt: "salt",
        versions: &versions,
        analysis: Some(&analysis),
        paused: false,
        now: at(100),
    };
    let decision = decide(&policy(), &rolling("v1", "v2", 1, 90), &obs);
    let candidate = decision.state.candidate.expect("still rolling");
    assert_eq!(candidate.completed_windows, [CtrCounts::of_report(&analysis)]);
    assert_eq!(candidate.last_analysis, None);
    assert_eq!(candidate.step_started_at, at(100));
}

#[test]
fn the_canary_start_is_recorded_once_for_cuped() {
    let versions = [version("v1", 1), version("v2", 2)];
    let passed = report(AnalysisVerdict::Pass, 2_000);
    let mut state = rolling("v1", "v2", 0, 0);
    let mut starts = Vec::new();
    for minute in [20, 40] {
        let obs = Observation {
            pipeline: "home",
            salt: "salt",
            versions: &versions,
            analysis: Some(&passed),
            paused: false,
            now: at(minute),
        };
        state = decide(&policy(), &state, &obs).state;
        let candidate = state.candidate.as_ref().expect("still rolling");
        starts.push((candidate.step, candidate.canary_started_at));
    }
    // Shadow (step 0) ends at minute 20: the canary started then, and stays
    // started then when its second step begins.
    assert_eq!(starts, [(1, Some(at(20))), (2, Some(at(20)))]);
}

#[test]
fn timers_run_while_paused_and_fire_on_resume() {
    let versions = [version("v1", 1), version("v2", 2)];
    let mut state = rolling("v1", "v2", 1, 0);
    for (minute, paused) in [(30, true), (90, true), (91, false)] {
        let obs = Observation {
            pipeline: "home",
            salt: "salt",
            versions: &versions,
            analysis: None,
            paused,
            now: at(minute),
        };
        state = decide(&policy(), &state, &obs).state;
        assert_eq!(state.candidate.is_some(), paused, "minute {minute}");
    }
    assert_eq!(state.finished["v2"].phase, RolledBack);
}

#[test]
fn history_keeps_the_last_transitions() {
    let mut versions = vec![version("v1", 0)];
    let mut state = RolloutState::default();
    let no_steps = RolloutPolicy { steps: Vec::new(), ..policy() };
    for minute in 1..=30 {
        versions.push(version(&format!("v{minute:02}"), minute));
        let obs = Observation {
            pipeline: "home",
            salt: "salt",
            versions: &versions,
            analysis: None,
            paused: false,
            now: at(minute),
        };
        state = decide(&no_steps, &state, &obs).state;
    }
    assert_eq!(state.history.len(), HISTORY_LIMIT);
    let last = state.history.last().expect("history");
    assert_eq!((last.version.as_str(), last.to), ("v30", Stable));
}

#[test]
fn requeue_follows_the_timers() {
    let versions = [version("v1", 1), version("v2", 2)];
    let idle = RolloutState {
        finished: BTreeMap::from([(
            "v2".to_owned(),
            FinishedVersion { phase: RolledBack, reason: "aborted".to_owned() },
        )]),
        ..stable("v1")
    };
    let cases = [
        // (state, now in seconds, paused, expected requeue)
        (idle, 0, false, IDLE_REQUEUE),
        (rolling("v1", "v2", 1, 0), 60, false, ACTIVE_REQUEUE),
        (rolling("v1", "v2", 1, 0), 3_596, false, Duration::from_secs(4)),
        (rolling("v1", "v2", 0, 0), 599, false, Duration::from_secs(1)),
        (rolling("v1", "v2", 1, 0), 60, true, IDLE_REQUEUE),
    ];
    for (state, second, paused, expected) in cases {
        let obs = Observation {
            pipeline: "home",
            salt: "salt",
            versions: &versions,
            analysis: None,
            paused,
            now: Timestamp::UNIX_EPOCH + SignedDuration::from_secs(second),
        };
        assert_eq!(decide(&policy(), &state, &obs).requeue_after, expected, "{state:?} at {second}s");
    }
}

#[test]
fn candidate_analysis_matches_its_step() {
    let window = WindowMetrics {
        stable: crate::analysis::SideMetrics::default(),
        candidate: crate::analysis::SideMetrics { requests: 1_000, ..Default::default() },
        before: Default::default(),
    };
    let shadow = rolling("v1", "v2", 0, 0).candidate.expect("candidate");
    let canary = rolling("v1", "v2", 1, 0).candidate.expect("candidate");
    assert_eq!(shadow.analyse(&policy(), &window).verdict, AnalysisVerdict::Pass);
    assert_eq!(canary.analyse(&policy(), &window).verdict, AnalysisVerdict::Inconclusive);
}
