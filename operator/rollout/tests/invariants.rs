//! Property tests: random policies and random sequences of observations
//! (analyses, pauses, commands, breakage, deletions, time) never break the
//! engine's invariants.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use reco_contracts::RoutingTable;
use reco_rollout::analysis::{AnalysisReport, AnalysisVerdict};
use reco_rollout::engine::{
    self, CandidateState, Command, Decision, Observation, RolloutState, VersionInfo, VersionPhase,
};
use reco_rollout::policy::{AnalysisPolicy, OfflineGate, OnTimeout, RolloutPolicy, Step};

/// What changes between two calls of `decide`.
#[derive(Clone, Debug)]
struct Tick {
    minutes: i64,
    analysis: Option<(AnalysisVerdict, u64)>,
    paused: bool,
    command: Option<(usize, Command)>,
    break_version: Option<usize>,
    fix_version: Option<usize>,
    delete_version: Option<usize>,
}

fn policy() -> impl Strategy<Value = RolloutPolicy> {
    let canary = (1u8..=100, 0u64..5_000, 5u64..60);
    (proptest::option::of(1u64..30), proptest::collection::vec(canary, 0..4), any::<bool>(), any::<bool>()).prop_map(
        |(shadow_minutes, mut canaries, proceed, gate)| {
            // reco-api only admits non-decreasing canary weights after shadow steps.
            canaries.sort_by_key(|(weight, _, _)| *weight);
            let shadow = shadow_minutes.map(|minutes| Step::Shadow { duration: Duration::from_secs(60 * minutes) });
            let canaries = canaries.into_iter().map(|(weight, min_impressions, minutes)| Step::Canary {
                weight,
                min_impressions,
                max_duration: Duration::from_secs(60 * minutes),
            });
            RolloutPolicy {
                steps: shadow.into_iter().chain(canaries).collect(),
                analysis: AnalysisPolicy {
                    on_timeout: if proceed { OnTimeout::Proceed } else { OnTimeout::Rollback },
                    ..AnalysisPolicy::recommended()
                },
                offline_gate: gate.then(|| OfflineGate { metric: "ndcg@10".to_owned(), max_regression: 0.1 }),
            }
        },
    )
}

fn versions() -> impl Strategy<Value = Vec<VersionInfo>> {
    proptest::collection::vec((0i64..5, proptest::option::of(0.2f64..0.4)), 1..5).prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(index, (created, metric))| VersionInfo {
                name: format!("v{index}"),
                created: Timestamp::UNIX_EPOCH + SignedDuration::from_mins(created),
                offline_metrics: metric.map(|value| ("ndcg@10".to_owned(), value)).into_iter().collect(),
                broken: None,
                ready: true,
                command: None,
            })
            .collect()
    })
}

fn tick() -> impl Strategy<Value = Tick> {
    let verdict =
        prop_oneof![Just(AnalysisVerdict::Pass), Just(AnalysisVerdict::Fail), Just(AnalysisVerdict::Inconclusive)];
    let command = prop_oneof![Just(Command::Promote), Just(Command::Abort)];
    (
        0i64..20,
        proptest::option::weighted(0.8, (verdict, 0u64..6_000)),
        proptest::bool::weighted(0.1),
        proptest::option::weighted(0.05, (0usize..5, command)),
        proptest::option::weighted(0.05, 0usize..5),
        proptest::option::weighted(0.05, 0usize..5),
        proptest::option::weighted(0.02, 0usize..5),
    )
        .prop_map(|(minutes, analysis, paused, command, break_version, fix_version, delete_version)| Tick {
            minutes,
            analysis,
            paused,
            command,
            break_version,
            fix_version,
            delete_version,
        })
}

fn report(verdict: AnalysisVerdict, canary_impressions: u64) -> AnalysisReport {
    AnalysisReport {
        stable_impressions: 10 * canary_impressions,
        stable_clicks: canary_impressions / 2,
        stable_ctr: 0.05,
        canary_impressions,
        canary_clicks: canary_impressions / 20,
        canary_ctr: 1.0 / 3.0,
        verdict,
        message: format!("{verdict:?}"),
        estimate: None,
        impressions_to_decide: None,
    }
}

fn weight_of(routing: &RoutingTable, version: &str) -> u8 {
    routing.versions.iter().find(|routed| routed.name == version).map_or(0, |routed| routed.weight)
}

/// Whether the candidate's current step passes in this observation.
fn step_passes(policy: &RolloutPolicy, candidate: &CandidateState, obs: &Observation<'_>) -> bool {
    let verdict = obs.analysis.map(|report| report.verdict);
    let elapsed = Duration::try_from(obs.now.duration_since(candidate.step_started_at)).unwrap_or(Duration::ZERO);
    match policy.steps.get(candidate.step as usize) {
        Some(Step::Shadow { duration }) => verdict != Some(AnalysisVerdict::Fail) && elapsed >= *duration,
        Some(Step::Canary { min_impressions, max_duration, .. }) => {
            let impressions = obs.analysis.map_or(0, |report| report.canary_impressions);
            (verdict == Some(AnalysisVerdict::Pass) && impressions >= *min_impressions)
                || (verdict != Some(AnalysisVerdict::Fail)
                    && elapsed >= *max_duration
                    && policy.analysis.on_timeout == OnTimeout::Proceed)
        }
        None => true,
    }
}

/// Checks one call of `decide` against every invariant.
fn check(
    policy: &RolloutPolicy,
    before: &RolloutState,
    obs: &Observation<'_>,
    previous_routing: &RoutingTable,
    decision: &Decision,
) {
    // Pure, and a restart from the stored JSON resumes identically.
    assert_eq!(&engine::decide(policy, before, obs), decision, "not deterministic");
    let restored: RolloutState =
        serde_json::from_str(&serde_json::to_string(before).expect("serialize")).expect("deserialize");
    assert_eq!(&restored, before, "state does not round-trip");
    assert_eq!(&engine::decide(policy, &restored, obs), decision, "restart diverges");

    // Stable keeps serving; weights sum to 100; at most one canary and one shadow.
    let routing = &decision.routing;
    match &decision.state.stable {
        Some(stable) => {
            assert!(routing.versions.iter().any(|routed| &routed.name == stable), "stable not routed: {routing:?}");
            assert_eq!(routing.validate(), Ok(()), "{routing:?}");
        }
        None => assert!(routing.versions.is_empty() && routing.shadow.is_none(), "{routing:?}"),
    }
    assert!(routing.versions.len() <= 2, "{routing:?}");
    for phase in [VersionPhase::Shadow, VersionPhase::Canary] {
        let count = decision.versions.values().filter(|status| status.phase == phase).count();
        assert!(count <= 1, "{count} versions in {phase:?}");
    }
    let observed: BTreeSet<&str> = obs.versions.iter().map(|version| version.name.as_str()).collect();
    assert!(decision.versions.keys().map(String::as_str).eq(observed.iter().copied()), "a status per version");

    if obs.paused {
        assert_eq!(&decision.state, before, "paused state changed");
        assert!(decision.transitions.is_empty(), "paused transitions");
        return;
    }

    let Some(candidate) = &before.candidate else {
        for transition in &decision.transitions {
            assert!(
                transition.from == VersionPhase::Pending || transition.from == VersionPhase::Stable,
                "{transition:?}"
            );
        }
        check_promotions_from_pending(policy, before, obs, decision);
        return;
    };
    let info = obs.versions.iter().find(|version| version.name == candidate.version);
    let command = info.and_then(|version| version.command);
    let healthy = info.is_some_and(|version| version.broken.is_none()) && command.is_none() && before.stable.is_some();

    // A Fail rolls back at once: no weight, no mirror, ended RolledBack.
    if healthy && obs.analysis.is_some_and(|report| report.verdict == AnalysisVerdict::Fail) {
        assert_ne!(decision.state.candidate.as_ref().map(|c| &c.version), Some(&candidate.version));
        assert_eq!(decision.state.finished[&candidate.version].phase, VersionPhase::RolledBack);
        assert_eq!(weight_of(routing, &candidate.version), 0);
        assert_ne!(routing.shadow.as_ref(), Some(&candidate.version));
    }

    // Steps advance one at a time, only when they pass; weights only grow.
    if let Some(after) = decision.state.candidate.as_ref().filter(|after| after.version == candidate.version) {
        assert!(after.step == candidate.step || after.step == candidate.step + 1, "{candidate:?} -> {after:?}");
        if after.step == candidate.step + 1 {
            assert!(healthy && step_passes(policy, candidate, obs), "step advanced without passing");
        }
        let (was, is) = (weight_of(previous_routing, &candidate.version), weight_of(routing, &candidate.version));
        assert!(is >= was, "candidate weight fell from {was} to {is}");
    }

    // A candidate becomes stable only after its last step passed, or by command.
    if decision.state.stable.as_ref() == Some(&candidate.version) {
        let last_step_passed =
            healthy && step_passes(policy, candidate, obs) && candidate.step as usize + 1 >= policy.steps.len();
        assert!(command == Some(Command::Promote) || last_step_passed, "promoted without passing: {candidate:?}");
    }
    check_promotions_from_pending(policy, before, obs, decision);
}

/// A pending version becomes stable only as the first version, by command,
/// or under a policy without steps.
fn check_promotions_from_pending(
    policy: &RolloutPolicy,
    before: &RolloutState,
    obs: &Observation<'_>,
    decision: &Decision,
) {
    let mut stable = before.stable.clone();
    for transition in &decision.transitions {
        if transition.from == VersionPhase::Pending && transition.to == VersionPhase::Stable {
            let commanded = obs
                .versions
                .iter()
                .any(|version| version.name == transition.version && version.command == Some(Command::Promote));
            assert!(stable.is_none() || commanded || policy.steps.is_empty(), "{transition:?}");
        }
        if transition.to == VersionPhase::Stable {
            stable = Some(transition.version.clone());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn invariants_hold(policy in policy(), mut versions in versions(), ticks in proptest::collection::vec(tick(), 1..40)) {
        let mut state = RolloutState::default();
        let mut now = Timestamp::UNIX_EPOCH;
        let mut routing = RoutingTable::default();
        let mut deleted = BTreeSet::new();
        for tick in ticks {
            now += SignedDuration::from_mins(tick.minutes);
            let count = versions.len();
            if let Some((index, command)) = tick.command {
                versions[index % count].command = Some(command);
            }
            if let Some(index) = tick.break_version {
                versions[index % count].broken = Some("artifact missing".to_owned());
            }
            if let Some(index) = tick.fix_version {
                versions[index % count].broken = None;
            }
            if let Some(index) = tick.delete_version {
                deleted.insert(index % count);
            }
            let observed: Vec<VersionInfo> = versions
                .iter()
                .enumerate()
                .filter(|(index, _)| !deleted.contains(index))
                .map(|(_, version)| version.clone())
                .collect();
            let analysis = tick.analysis.map(|(verdict, impressions)| report(verdict, impressions));
            let obs = Observation {
                pipeline: "home",
                salt: "salt",
                versions: &observed,
                analysis: analysis.as_ref(),
                paused: tick.paused,
                now,
            };
            let decision = engine::decide(&policy, &state, &obs);
            check(&policy, &state, &obs, &routing, &decision);
            state = decision.state;
            routing = decision.routing;
        }
    }
}
