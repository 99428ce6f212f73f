//! Seeded simulations of rollouts, shared by `tests/simulation.rs` and
//! `examples/sample_size.rs`.
//!
//! Traffic is a steady stream of impressions split by the routing table;
//! each side's clicks are binomial with its true CTR. Every simulated
//! minute the controller's loop is replayed: analyse the current step's
//! window, call `decide`, apply its routing.

use jiff::{SignedDuration, Timestamp};
use rand::rngs::StdRng;
use rand_distr::{Binomial, Distribution};
use reco_rollout::analysis::{AnalysisVerdict, SideMetrics, WindowMetrics};
use reco_rollout::engine::{self, Observation, RolloutState, VersionInfo, VersionPhase};
use reco_rollout::policy::RolloutPolicy;

/// The traffic of a simulated pipeline.
#[derive(Clone, Copy, Debug)]
pub struct Traffic {
    /// Impressions per minute over both sides.
    pub impressions_per_minute: u64,
    pub stable_ctr: f64,
    pub canary_ctr: f64,
}

/// How a simulated rollout ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Promoted,
    /// Rolled back on a `Fail` verdict of the analysis.
    FailedAnalysis,
    /// Rolled back when a step ran out of time undecided.
    TimedOut,
}

/// Rolls a candidate out under `policy` against a stable version.
pub fn simulate_rollout(policy: &RolloutPolicy, traffic: Traffic, rng: &mut StdRng) -> Outcome {
    let versions = [version("stable", 0), version("candidate", 1)];
    let mut state = RolloutState::default();
    let mut window = empty_window();
    let mut minute = 0;
    loop {
        let analysis = state.candidate.as_ref().map(|candidate| candidate.analyse(policy, &window));
        let obs = Observation {
            pipeline: "sim",
            salt: "sim",
            versions: &versions,
            analysis: analysis.as_ref(),
            paused: false,
            now: Timestamp::UNIX_EPOCH + SignedDuration::from_mins(minute),
        };
        let step_before = state.candidate.as_ref().map(|candidate| candidate.step);
        let decision = engine::decide(policy, &state, &obs);
        if let Some(finished) = decision.state.finished.get("candidate") {
            assert_eq!(finished.phase, VersionPhase::RolledBack, "{finished:?}");
            let failed = analysis.is_some_and(|report| report.verdict == AnalysisVerdict::Fail);
            return if failed { Outcome::FailedAnalysis } else { Outcome::TimedOut };
        }
        if decision.state.stable.as_deref() == Some("candidate") {
            return Outcome::Promoted;
        }
        state = decision.state;
        if state.candidate.as_ref().map(|candidate| candidate.step) != step_before {
            window = empty_window();
        }
        let canary_weight = decision
            .routing
            .versions
            .iter()
            .find(|routed| routed.name == "candidate")
            .map_or(0, |routed| routed.weight);
        add_minute(&mut window, traffic, canary_weight, decision.routing.shadow.is_some(), rng);
        minute += 1;
    }
}

fn version(name: &str, created_minute: i64) -> VersionInfo {
    VersionInfo {
        name: name.to_owned(),
        created: Timestamp::UNIX_EPOCH + SignedDuration::from_mins(created_minute),
        offline_metrics: Default::default(),
        broken: None,
        command: None,
    }
}

pub fn empty_window() -> WindowMetrics {
    WindowMetrics { stable: SideMetrics::default(), candidate: SideMetrics::default() }
}

/// One minute of traffic; requests carry 10 impressions, none fails, p99 is 50 ms.
fn add_minute(window: &mut WindowMetrics, traffic: Traffic, canary_weight: u8, mirrored: bool, rng: &mut StdRng) {
    let canary = traffic.impressions_per_minute * u64::from(canary_weight) / 100;
    add_clicks(&mut window.candidate, canary, traffic.canary_ctr, rng);
    add_clicks(&mut window.stable, traffic.impressions_per_minute - canary, traffic.stable_ctr, rng);
    if mirrored {
        window.candidate.requests += traffic.impressions_per_minute / 10;
        window.candidate.p99_latency_seconds = Some(0.05);
    }
}

/// Adds `impressions` with binomial clicks (one request per 10 impressions).
pub fn add_clicks(side: &mut SideMetrics, impressions: u64, ctr: f64, rng: &mut StdRng) {
    let clicks = Binomial::new(impressions, ctr).map_or(0, |binomial| binomial.sample(rng));
    side.impressions += impressions;
    side.clicks += clicks;
    side.requests += impressions / 10;
    side.p99_latency_seconds = Some(0.05);
}
