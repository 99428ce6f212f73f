//! How many impressions the sequential CTR test needs, against a
//! fixed-sample test, and its error rates in full simulated rollouts under
//! the recommended policy. Prints markdown for BENCHMARKS.md.
//!
//! `cargo run --release -p reco-rollout --example sample_size`

#[path = "../tests/support/simulation.rs"]
mod simulation;

use rand::SeedableRng;
use rand::rngs::StdRng;
use reco_rollout::analysis::{self, AnalysisVerdict};
use reco_rollout::policy::{AnalysisPolicy, RolloutPolicy, Step};
use simulation::{Outcome, Traffic};
use statrs::distribution::{ContinuousCDF, Normal};

const RUNS: usize = 1_000;
const BASE_CTR: f64 = 0.05;
const DROP: f64 = 0.10;
const POWER: f64 = 0.90;
const LOOK_EVERY: u64 = 500;
/// Traffic of the simulated pipelines, impressions a minute over both sides.
const TRAFFIC_PER_MINUTE: [u64; 3] = [10_000, 20_000, 50_000];

fn main() {
    let policy = RolloutPolicy::recommended();
    let alpha = 1.0 - policy.analysis.confidence;
    let canary_weight = policy
        .steps
        .iter()
        .find_map(|step| match step {
            Step::Canary { weight, .. } => Some(*weight),
            Step::Shadow { .. } => None,
        })
        .unwrap_or(50);
    println!("<!-- cargo run --release -p reco-rollout --example sample_size -->");
    println!("Command: `cargo run --release -p reco-rollout --example sample_size` (seeded, {RUNS} runs per row)\n");

    let dropped_ctr = BASE_CTR * (1.0 - DROP);
    let mut rng = StdRng::seed_from_u64(1);
    let mut needed: Vec<u64> = Vec::with_capacity(RUNS);
    let mut undecided_or_passed = 0;
    for _ in 0..RUNS {
        match impressions_to_decide(
            &policy.analysis,
            BASE_CTR,
            dropped_ctr,
            canary_weight,
            LOOK_EVERY,
            10_000_000,
            &mut rng,
        ) {
            (AnalysisVerdict::Fail, impressions) => needed.push(impressions),
            _ => undecided_or_passed += 1,
        }
    }
    needed.sort_unstable();
    let fixed = fixed_sample_canary_impressions(BASE_CTR, dropped_ctr, canary_weight, alpha, POWER);
    let median = quantile(&needed, 0.5);
    let p90 = quantile(&needed, 0.9);
    println!(
        "### Canary impressions to roll back a {:.0}% CTR drop at base CTR {:.0}% (canary {canary_weight}%, a look every {LOOK_EVERY} canary impressions)\n",
        100.0 * DROP,
        100.0 * BASE_CTR
    );
    println!("| test | canary impressions | × fixed |");
    println!("|---|---:|---:|");
    println!("| fixed sample, one-sided α = {alpha:.2}, power {POWER:.2} | {fixed:.0} | 1.00 |");
    println!("| sequential, median | {median} | {:.2} |", median as f64 / fixed);
    println!("| sequential, p90 | {p90} | {:.2} |", p90 as f64 / fixed);
    println!("\nNot rolled back within 10M canary impressions: {undecided_or_passed}/{RUNS}.\n");

    println!("### Full rollouts under the recommended policy, a look every minute\n");
    println!("Rolled back: total (by analysis + by timeout).\n");
    println!("| impressions/min | base CTR | A/A rolled back | 10% drop rolled back |");
    println!("|---:|---:|---:|---:|");
    for impressions_per_minute in TRAFFIC_PER_MINUTE {
        for (seed, base) in (0..).step_by(2).zip([0.02, 0.05, 0.10]) {
            let aa = rollouts(&policy, impressions_per_minute, base, base, seed);
            let bad = rollouts(&policy, impressions_per_minute, base, base * (1.0 - DROP), seed + 1);
            println!("| {impressions_per_minute} | {:.0}% | {} | {} |", 100.0 * base, aa.describe(), bad.describe());
        }
    }
    println!(
        "\nA/A bound: α = {alpha:.2}; binomial slack at {RUNS} runs: 3·√(α(1−α)/n) = {:.3}.",
        3.0 * (alpha * (1.0 - alpha) / RUNS as f64).sqrt()
    );
}

/// Looks at one growing window every `look_every` canary impressions until
/// the canary test decides, or `max_canary_impressions` pass. Returns the
/// verdict and the canary impressions it took.
fn impressions_to_decide(
    policy: &AnalysisPolicy,
    stable_ctr: f64,
    canary_ctr: f64,
    canary_weight: u8,
    look_every: u64,
    max_canary_impressions: u64,
    rng: &mut StdRng,
) -> (AnalysisVerdict, u64) {
    let stable_per_look = look_every * u64::from(100 - canary_weight) / u64::from(canary_weight);
    let mut window = simulation::empty_window();
    while window.candidate.impressions < max_canary_impressions {
        simulation::add_clicks(&mut window.candidate, look_every, canary_ctr, rng);
        simulation::add_clicks(&mut window.stable, stable_per_look, stable_ctr, rng);
        let verdict = analysis::analyse_canary(policy, &window).verdict;
        if verdict != AnalysisVerdict::Inconclusive {
            return (verdict, window.candidate.impressions);
        }
    }
    (AnalysisVerdict::Inconclusive, window.candidate.impressions)
}

/// Counts of rollout outcomes.
struct Tally {
    failed: usize,
    timed_out: usize,
}

impl Tally {
    fn describe(&self) -> String {
        let rate = |count: usize| 100.0 * count as f64 / RUNS as f64;
        format!("{:.1}% ({:.1}% + {:.1}%)", rate(self.failed + self.timed_out), rate(self.failed), rate(self.timed_out))
    }
}

fn rollouts(policy: &RolloutPolicy, impressions_per_minute: u64, stable_ctr: f64, canary_ctr: f64, seed: u64) -> Tally {
    let traffic = Traffic { impressions_per_minute, stable_ctr, canary_ctr };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = Tally { failed: 0, timed_out: 0 };
    for _ in 0..RUNS {
        match simulation::simulate_rollout(policy, traffic, &mut rng) {
            Outcome::Promoted => {}
            Outcome::FailedAnalysis => tally.failed += 1,
            Outcome::TimedOut => tally.timed_out += 1,
        }
    }
    tally
}

/// Canary impressions of a one-sided two-proportion z-test at the given
/// allocation (Fleiss, without continuity correction).
fn fixed_sample_canary_impressions(stable_ctr: f64, canary_ctr: f64, canary_weight: u8, alpha: f64, power: f64) -> f64 {
    let normal = Normal::new(0.0, 1.0).expect("the standard normal is valid");
    let (z_alpha, z_beta) = (normal.inverse_cdf(1.0 - alpha), normal.inverse_cdf(power));
    let ratio = f64::from(100 - canary_weight) / f64::from(canary_weight);
    let pooled = (canary_ctr + ratio * stable_ctr) / (1.0 + ratio);
    let null_sd = (pooled * (1.0 - pooled) * (1.0 + 1.0 / ratio)).sqrt();
    let alternative_sd = (canary_ctr * (1.0 - canary_ctr) + stable_ctr * (1.0 - stable_ctr) / ratio).sqrt();
    ((z_alpha * null_sd + z_beta * alternative_sd) / (stable_ctr - canary_ctr)).powi(2)
}

fn quantile(sorted: &[u64], q: f64) -> u64 {
    reco_runtime::stats::nearest_rank(sorted, q).unwrap_or(0)
}
