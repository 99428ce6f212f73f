//! What a demo run leaves in `DIR/report.json`, and the terminal timeline.

use std::collections::BTreeMap;
use std::time::Instant;

use reco_rollout::analysis::AnalysisReport;
use reco_rollout::engine::HistoryEntry;
use reco_rollout::{AnalysisVerdict, Cause, VersionPhase};
use serde::{Deserialize, Serialize};

use crate::sim::{SimStats, VersionCounts};

/// Where the traffic stood when a rollout began: what its decision took is
/// counted from here.
pub struct RolloutStart {
    pub version: String,
    at: Instant,
    total: VersionCounts,
    candidate: VersionCounts,
}

impl RolloutStart {
    pub fn now(version: &str, traffic: &SimStats) -> Self {
        Self {
            version: version.to_owned(),
            at: Instant::now(),
            total: traffic.total(),
            candidate: traffic.version(version),
        }
    }

    /// The outcome of the rollout, ended now in `phase`; `demo_started` is
    /// when the whole demo began.
    pub fn outcome(
        &self,
        phase: VersionPhase,
        (decided_by, reason): (Cause, String),
        transitions: Vec<String>,
        traffic: &SimStats,
        demo_started: Instant,
    ) -> VersionOutcome {
        let served = traffic.version(&self.version);
        VersionOutcome {
            outcome: outcome_name(phase).to_owned(),
            decided_by,
            reason,
            wall_seconds: self.at.elapsed().as_secs_f64(),
            decided_at_seconds: demo_started.elapsed().as_secs_f64(),
            impressions_to_decision: traffic.total().impressions.saturating_sub(self.total.impressions),
            candidate_impressions_to_decision: served.impressions.saturating_sub(self.candidate.impressions),
            transitions,
            impressions: served.impressions,
            clicks: served.clicks,
            ctr: served.ctr(),
        }
    }
}

/// Where a rollout stands at a tick, apart from its look's figures.
pub struct TickHead {
    pub t: f64,
    pub version: String,
    pub phase: VersionPhase,
    pub step: String,
    pub weight: u8,
    pub stable: String,
    pub traffic: BTreeMap<String, VersionCounts>,
}

impl TimelineEntry {
    /// The entry of a tick: its look's figures from `analysis` (`no_look`
    /// says why there is none), its transitions as the engine records them.
    pub fn new(head: TickHead, analysis: Option<&AnalysisReport>, no_look: &str, transitions: &[HistoryEntry]) -> Self {
        TimelineEntry {
            t: head.t,
            version: head.version,
            phase: head.phase,
            step: head.step,
            weight: head.weight,
            stable: head.stable,
            stable_impressions: analysis.map_or(0, |a| a.stable_impressions),
            stable_clicks: analysis.map_or(0, |a| a.stable_clicks),
            stable_ctr: analysis.map_or(0.0, |a| a.stable_ctr),
            canary_impressions: analysis.map_or(0, |a| a.canary_impressions),
            canary_clicks: analysis.map_or(0, |a| a.canary_clicks),
            canary_ctr: analysis.map_or(0.0, |a| a.canary_ctr),
            verdict: analysis.map(|a| a.verdict),
            message: analysis.map_or_else(|| no_look.to_owned(), |a| a.message.clone()),
            transitions: transitions
                .iter()
                .map(|h| format!("{} {:?} -> {:?}: {}", h.version, h.from, h.to, h.reason))
                .collect(),
            traffic: head.traffic,
        }
    }
}

/// One analysis tick of a rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// Seconds since the replayed traffic started.
    pub t: f64,
    /// The version being rolled out.
    pub version: String,
    pub phase: VersionPhase,
    /// "step 2/4 (canary 10%)"-like label of the step the tick ended in.
    pub step: String,
    /// The candidate's share of users after the tick (0 in shadow).
    pub weight: u8,
    pub stable: String,
    /// The analysed window (current step) as the engine saw it.
    pub stable_impressions: u64,
    pub stable_clicks: u64,
    pub stable_ctr: f64,
    pub canary_impressions: u64,
    pub canary_clicks: u64,
    pub canary_ctr: f64,
    /// `None` when no look was due (the version just started).
    pub verdict: Option<AnalysisVerdict>,
    pub message: String,
    /// Transitions of this tick, as the operator would emit Events.
    pub transitions: Vec<String>,
    /// The simulator's cumulative counts per version at this tick.
    pub traffic: BTreeMap<String, VersionCounts>,
}

impl TimelineEntry {
    /// One terminal line: step, weight, impressions and CTR per side, decision.
    pub fn line(&self) -> String {
        let verdict = self.verdict.map_or_else(|| "-".to_owned(), |v| format!("{v:?}"));
        let mut line = format!(
            "[{:>6.1}s] {} {:<9} {:<24} w={:>3}% | stable {} {:>7} imp {:>6.2}% | canary {:>7} imp {:>6.2}% | {verdict}: {}",
            self.t,
            self.version,
            format!("{:?}", self.phase),
            self.step,
            self.weight,
            self.stable,
            self.stable_impressions,
            100.0 * self.stable_ctr,
            self.canary_impressions,
            100.0 * self.canary_ctr,
            self.message,
        );
        for transition in &self.transitions {
            line.push_str(&format!("\n           -> {transition}"));
        }
        line
    }
}

/// How one rolled-out version ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionOutcome {
    /// `promoted`, `rolled_back` or `failed`.
    pub outcome: String,
    /// What decided it: the analysis, a step's timeout, ...
    pub decided_by: Cause,
    pub reason: String,
    /// Seconds from the start of its rollout to the decision.
    pub wall_seconds: f64,
    /// Seconds from the start of the demo (training and set-up included) to the decision.
    #[serde(default)]
    pub decided_at_seconds: f64,
    /// Impressions served to all users (every version) from the start of its
    /// rollout to the decision: the simulated traffic the decision took.
    pub impressions_to_decision: u64,
    /// Of those, the impressions it served itself.
    pub candidate_impressions_to_decision: u64,
    /// The steps it went through, as transitions.
    pub transitions: Vec<String>,
    /// What it served over the whole run.
    pub impressions: u64,
    pub clicks: u64,
    pub ctr: f64,
}

/// Outcome names in the report.
pub fn outcome_name(phase: VersionPhase) -> &'static str {
    match phase {
        VersionPhase::Stable => "promoted",
        VersionPhase::RolledBack => "rolled_back",
        VersionPhase::Failed => "failed",
        VersionPhase::Retired => "retired",
        VersionPhase::Pending => "pending",
        VersionPhase::Shadow => "shadow",
        VersionPhase::Canary => "canary",
    }
}

/// Request totals: every recommend request and click event the simulator sent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestTotals {
    /// Recommend requests plus click events.
    pub total: u64,
    /// Of those, failed ones (transport error or non-2xx).
    pub failed: u64,
    pub recommend: u64,
    pub recommend_failed: u64,
    pub events: u64,
    pub events_failed: u64,
    /// Arrivals not sent because the in-flight cap was reached.
    pub shed: u64,
    /// Answers the gateway flagged degraded.
    pub degraded: u64,
    /// Requests that succeeded only when sent again (the client's one retry).
    #[serde(default)]
    pub retried: u64,
}

impl RequestTotals {
    pub fn of(stats: &SimStats) -> Self {
        let t = stats.total();
        RequestTotals {
            total: t.requests + t.clicks,
            failed: t.failed + t.events_failed,
            recommend: t.requests,
            recommend_failed: t.failed,
            events: t.clicks,
            events_failed: t.events_failed,
            shed: stats.shed,
            degraded: t.degraded,
            retried: t.retried,
        }
    }

    pub fn add(&mut self, other: &RequestTotals) {
        self.total += other.total;
        self.failed += other.failed;
        self.recommend += other.recommend;
        self.recommend_failed += other.recommend_failed;
        self.events += other.events;
        self.events_failed += other.events_failed;
        self.shed += other.shed;
        self.degraded += other.degraded;
        self.retried += other.retried;
    }
}

/// Per-version traffic in the report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Traffic {
    pub requests: u64,
    pub failed: u64,
    pub impressions: u64,
    pub clicks: u64,
    pub ctr: f64,
}

impl From<VersionCounts> for Traffic {
    fn from(c: VersionCounts) -> Self {
        Traffic { requests: c.requests, failed: c.failed, impressions: c.impressions, clicks: c.clicks, ctr: c.ctr() }
    }
}

/// `DIR/report.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DemoReport {
    pub seed: u64,
    /// `scrape` or `prometheus`.
    pub metrics_source: String,
    /// The rollout policy, as a RecommenderPipeline spec.
    pub policy: String,
    pub rate: f64,
    pub wall_seconds: f64,
    /// Rolled-out versions and how they ended.
    pub versions: BTreeMap<String, VersionOutcome>,
    /// What each version served, as the simulated users saw it.
    pub traffic: BTreeMap<String, Traffic>,
    pub requests: RequestTotals,
    /// Counters read back from Prometheus at the end (with `--prometheus`):
    /// series name, then version, then value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prometheus: BTreeMap<String, BTreeMap<String, f64>>,
    pub timeline: Vec<TimelineEntry>,
}
