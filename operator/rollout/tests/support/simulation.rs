//! Seeded simulations of rollouts on heterogeneous users, shared by
//! `tests/simulation.rs` and `examples/sample_size.rs`.
//!
//! # Users
//!
//! A [`Population`] is drawn once per scenario: each user has an activity
//! (lognormal, how many pages they ask for) and a CTR of their own (Beta
//! around the base CTR, with a concentration: the smaller, the more users
//! differ). [`Users::ML_100K`] is fitted to MovieLens-100K, the data the
//! demo replays: log-activity σ 0.88 and a per-user positive rate of
//! concentration 8.5 (method of moments, binomial noise removed).
//!
//! # Rollouts
//!
//! Each run reshuffles the users over the 10,000 routing buckets (a fresh
//! salt) and so over the 1,000 user groups. Every simulated minute the
//! controller's loop is replayed: the pipeline serves its pages (10 items
//! each), the current step's window is analysed, `decide` is called and its
//! routing applied. A group's pages in a minute are Poisson; its clicks are
//! binomial at the group's activity-weighted CTR (so a user's CTR persists
//! from minute to minute, as it does in life, which is what makes the
//! binomial variance of a CTR too small).
//!
//! [`Variance::IndependentPages`] re-deals every group-minute of traffic
//! to a random group of the same side before the analysis sees it: the
//! persistence across minutes disappears, which is exactly what a test
//! that treats impressions as independent assumes.

use jiff::{SignedDuration, Timestamp};
use rand::RngExt;
use rand::rngs::StdRng;
use rand_distr::{Beta, Binomial, Distribution, LogNormal, Poisson};
use reco_contracts::routing::{BUCKETS, USER_GROUPS, groups_of_weight, user_group};
use reco_rollout::analysis::{AnalysisVerdict, GroupCounts, Groups, SideMetrics, WindowMetrics};
use reco_rollout::engine::{self, Observation, RolloutState, VersionInfo, VersionPhase};
use reco_rollout::policy::RolloutPolicy;

/// Items per page: every page is this many impressions.
pub const PAGE_SIZE: u64 = 10;

/// How users differ.
#[derive(Clone, Copy, Debug)]
pub struct Users {
    pub count: usize,
    /// σ of log-activity; 0: every user equally active.
    pub activity_sigma: f64,
    /// Beta concentration of per-user CTRs; `None`: every user has the base CTR.
    pub ctr_concentration: Option<f64>,
}

impl Users {
    /// Every user alike: what the binomial variance assumes.
    pub const IDENTICAL: Users = Users { count: 100_000, activity_sigma: 0.0, ctr_concentration: None };
    /// Fitted to MovieLens-100K (see the module docs).
    pub const ML_100K: Users = Users { count: 100_000, activity_sigma: 0.88, ctr_concentration: Some(8.5) };
    /// More spread than MovieLens: a few users dominate.
    pub const SKEWED: Users = Users { count: 100_000, activity_sigma: 1.5, ctr_concentration: Some(5.0) };
}

/// The users of a scenario: activity and CTR of each.
pub struct Population {
    activity: Vec<f64>,
    ctr: Vec<f64>,
}

impl Population {
    pub fn draw(users: Users, base_ctr: f64, rng: &mut StdRng) -> Self {
        let activity = LogNormal::new(0.0, users.activity_sigma).expect("a valid σ");
        let ctr = users.ctr_concentration.map(|k| Beta::new(k * base_ctr, k * (1.0 - base_ctr)).expect("valid shape"));
        Population {
            activity: (0..users.count).map(|_| activity.sample(rng)).collect(),
            ctr: (0..users.count).map(|_| ctr.as_ref().map_or(base_ctr, |beta| beta.sample(rng))).collect(),
        }
    }

    /// Deals the users over the groups at random (a fresh salt): each
    /// group's share of pages and its activity-weighted CTR.
    fn deal(&self, rng: &mut StdRng) -> Vec<Group> {
        let mut activity = vec![0.0; USER_GROUPS as usize];
        let mut weighted_ctr = vec![0.0; USER_GROUPS as usize];
        for (a, q) in self.activity.iter().zip(&self.ctr) {
            let group = user_group(rng.random_range(0..BUCKETS)) as usize;
            activity[group] += a;
            weighted_ctr[group] += a * q;
        }
        let total: f64 = activity.iter().sum();
        activity
            .iter()
            .zip(weighted_ctr)
            .map(|(a, aq)| Group { share: a / total, ctr: if *a > 0.0 { aq / a } else { 0.0 } })
            .collect()
    }
}

#[derive(Clone, Copy, Debug)]
struct Group {
    /// Share of the pipeline's pages.
    share: f64,
    ctr: f64,
}

/// What the analysis is shown of the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variance {
    /// Each user stays in their group: the product.
    UserGroups,
    /// Traffic re-dealt to random groups every minute: independent impressions.
    IndependentPages,
}

/// The traffic of a simulated pipeline.
#[derive(Clone, Copy, Debug)]
pub struct Traffic {
    /// Impressions per minute over both sides.
    pub impressions_per_minute: u64,
    /// The candidate's CTR relative to stable's, per user (1.0: A/A).
    pub canary_lift: f64,
    /// The candidate's share of pages relative to its weight (1.0: a sound split).
    pub canary_traffic: f64,
    /// Minutes of pre-rollout traffic read for CUPED (0: none).
    pub before_minutes: u64,
    pub variance: Variance,
}

impl Traffic {
    pub fn new(impressions_per_minute: u64, canary_lift: f64) -> Self {
        Traffic {
            impressions_per_minute,
            canary_lift,
            canary_traffic: 1.0,
            before_minutes: 0,
            variance: Variance::UserGroups,
        }
    }
}

/// How a simulated rollout ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Promoted,
    /// Rolled back on a `Fail` verdict of the analysis.
    FailedAnalysis,
    /// Rolled back when a step ran out of time undecided.
    TimedOut,
    /// Held on a sample ratio mismatch, at this minute.
    Mismatch {
        minute: i64,
    },
}

/// A simulated pipeline: its groups and where the time is.
struct Pipeline<'a> {
    groups: Vec<Group>,
    traffic: Traffic,
    rng: &'a mut StdRng,
}

impl Pipeline<'_> {
    /// One minute of pages for every group: `canary_groups` serve the
    /// candidate. Returns each group's (impressions, clicks).
    fn minute(&mut self, canary_groups: u64) -> Vec<GroupCounts> {
        let pages = self.traffic.impressions_per_minute as f64 / PAGE_SIZE as f64;
        let canary_share = canary_groups as f64 / USER_GROUPS as f64;
        let stable_scale = if canary_share < 1.0 {
            (1.0 - canary_share * self.traffic.canary_traffic) / (1.0 - canary_share)
        } else {
            1.0
        };
        let mut counts = Vec::with_capacity(self.groups.len());
        for (index, group) in self.groups.iter().enumerate() {
            let on_canary = (index as u64) < canary_groups;
            let (scale, lift) =
                if on_canary { (self.traffic.canary_traffic, self.traffic.canary_lift) } else { (stable_scale, 1.0) };
            let mean = pages * group.share * scale;
            let served = if mean > 0.0 { Poisson::new(mean).map_or(0.0, |p| p.sample(self.rng)) } else { 0.0 };
            let impressions = served as u64 * PAGE_SIZE;
            let clicks = Binomial::new(impressions, (group.ctr * lift).min(1.0)).map_or(0, |b| b.sample(self.rng));
            counts.push(GroupCounts { impressions, clicks });
        }
        if self.traffic.variance == Variance::IndependentPages {
            redeal(&mut counts, canary_groups as usize, self.rng);
        }
        counts
    }
}

/// Moves each group's counts to a random group of the same side.
fn redeal(counts: &mut [GroupCounts], canary_groups: usize, rng: &mut StdRng) {
    let mut dealt = vec![GroupCounts::default(); counts.len()];
    for (index, group) in counts.iter().enumerate() {
        let target = if index < canary_groups {
            rng.random_range(0..canary_groups)
        } else {
            rng.random_range(canary_groups..counts.len())
        };
        dealt[target].impressions += group.impressions;
        dealt[target].clicks += group.clicks;
    }
    counts.copy_from_slice(&dealt);
}

/// Adds a minute's counts of the groups in `range` to a side.
fn add(side: &mut SideMetrics, counts: &[GroupCounts], range: std::ops::Range<usize>) {
    for index in range {
        let group = counts[index];
        if group.impressions == 0 {
            continue;
        }
        let entry = side.groups.entry(index as u16).or_default();
        entry.impressions += group.impressions;
        entry.clicks += group.clicks;
        side.impressions += group.impressions;
        side.clicks += group.clicks;
        side.requests += group.impressions / PAGE_SIZE;
    }
    side.latency = vec![(0.05, side.requests)];
    side.latency_count = side.requests;
}

/// Adds a minute of traffic to a window, `canary_groups` serving the candidate.
fn serve_minute(pipeline: &mut Pipeline<'_>, window: &mut WindowMetrics, canary_groups: u64) {
    let counts = pipeline.minute(canary_groups);
    let split = canary_groups as usize;
    add(&mut window.candidate, &counts, 0..split);
    add(&mut window.stable, &counts, split..counts.len());
}

/// One canary step at a fixed weight, looked at minute by minute without
/// the engine: for measuring what the test needs.
pub struct Canary<'a> {
    pipeline: Pipeline<'a>,
    window: WindowMetrics,
    canary_groups: u64,
}

impl<'a> Canary<'a> {
    /// A fresh deal of `population` at the weight of the policy's first canary step.
    pub fn new(population: &Population, traffic: Traffic, policy: &RolloutPolicy, rng: &'a mut StdRng) -> Self {
        let mut pipeline = Pipeline { groups: population.deal(rng), traffic, rng };
        let before = pre_rollout(&mut pipeline);
        let canary_groups = groups_of_weight(policy.canary_weights().first().copied().unwrap_or(0));
        Canary { pipeline, window: WindowMetrics { before, ..WindowMetrics::default() }, canary_groups }
    }

    pub fn minute(&mut self) {
        serve_minute(&mut self.pipeline, &mut self.window, self.canary_groups);
    }

    pub fn window(&self) -> &WindowMetrics {
        &self.window
    }
}

/// Rolls a candidate out under `policy` against a stable version, on a
/// fresh deal of `population`.
pub fn simulate_rollout(
    policy: &RolloutPolicy,
    population: &Population,
    traffic: Traffic,
    rng: &mut StdRng,
) -> Outcome {
    let groups = population.deal(rng);
    let mut pipeline = Pipeline { groups, traffic, rng };
    let before = pre_rollout(&mut pipeline);
    let versions = [version("stable", 0), version("candidate", 1)];
    let mut state = RolloutState::default();
    let mut window = WindowMetrics { before: before.clone(), ..WindowMetrics::default() };
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
        if analysis.as_ref().is_some_and(|report| report.verdict == AnalysisVerdict::SampleRatioMismatch) {
            return Outcome::Mismatch { minute };
        }
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
            window = WindowMetrics { before: before.clone(), ..WindowMetrics::default() };
        }
        let weight_of = |name: &str| decision.routing.versions.iter().find(|v| v.name == name).map_or(0, |v| v.weight);
        serve_minute(&mut pipeline, &mut window, groups_of_weight(weight_of("candidate")));
        if decision.routing.shadow.is_some() {
            window.candidate.requests = window.stable.requests;
            window.candidate.latency = vec![(0.05, window.candidate.requests)];
            window.candidate.latency_count = window.candidate.requests;
        }
        minute += 1;
    }
}

/// What every group did (all on stable) over the pre-rollout minutes.
fn pre_rollout(pipeline: &mut Pipeline<'_>) -> Groups {
    let mut before = Groups::new();
    let minutes = pipeline.traffic.before_minutes;
    if minutes == 0 {
        return before;
    }
    let pages = pipeline.traffic.impressions_per_minute as f64 / PAGE_SIZE as f64 * minutes as f64;
    for (index, group) in pipeline.groups.iter().enumerate() {
        let mean = pages * group.share;
        let served = if mean > 0.0 { Poisson::new(mean).map_or(0.0, |p| p.sample(pipeline.rng)) } else { 0.0 };
        let impressions = served as u64 * PAGE_SIZE;
        let clicks = Binomial::new(impressions, group.ctr).map_or(0, |b| b.sample(pipeline.rng));
        before.insert(index as u16, GroupCounts { impressions, clicks });
    }
    before
}

fn version(name: &str, created_minute: i64) -> VersionInfo {
    VersionInfo {
        name: name.to_owned(),
        created: Timestamp::UNIX_EPOCH + SignedDuration::from_mins(created_minute),
        offline_metrics: Default::default(),
        broken: None,
        ready: true,
        command: None,
    }
}

/// Outcomes of `runs` seeded rollouts.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    pub runs: usize,
    pub promoted: usize,
    pub failed: usize,
    pub timed_out: usize,
    pub mismatched: usize,
}

impl Tally {
    pub fn rate(&self, count: usize) -> f64 {
        count as f64 / self.runs as f64
    }
}

/// Runs `runs` rollouts of one scenario.
pub fn rollouts(
    policy: &RolloutPolicy,
    users: Users,
    base_ctr: f64,
    traffic: Traffic,
    runs: usize,
    seed: u64,
) -> Tally {
    let mut rng = <StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let population = Population::draw(users, base_ctr, &mut rng);
    let mut tally = Tally { runs, ..Tally::default() };
    for _ in 0..runs {
        match simulate_rollout(policy, &population, traffic, &mut rng) {
            Outcome::Promoted => tally.promoted += 1,
            Outcome::FailedAnalysis => tally.failed += 1,
            Outcome::TimedOut => tally.timed_out += 1,
            Outcome::Mismatch { .. } => tally.mismatched += 1,
        }
    }
    tally
}
