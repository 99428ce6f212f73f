//! Error rates and sample sizes of the rollout analysis on simulated users
//! who differ in how much they see and click (`tests/support/simulation.rs`),
//! against the test that treats impressions as independent and a
//! fixed-sample test. Prints markdown for BENCHMARKS.md.
//!
//! `cargo run --release -p reco-rollout --example sample_size [-- --runs N]`

#[path = "../tests/support/simulation.rs"]
mod simulation;

use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use reco_rollout::analysis::{self, AnalysisVerdict, WindowMetrics};
use reco_rollout::policy::{RolloutPolicy, Step};
use simulation::{Population, Tally, Traffic, Users, Variance};
use statrs::distribution::{ContinuousCDF, Normal};

const BASE_CTR: f64 = 0.05;
const DROP: f64 = 0.10;
const POWER: f64 = 0.90;
const IMPRESSIONS_PER_MINUTE: u64 = 20_000;
/// A day of pre-rollout traffic for CUPED.
const DAY: u64 = 24 * 60;
const POPULATIONS: [(&str, Users); 3] =
    [("identical", Users::IDENTICAL), ("MovieLens fit", Users::ML_100K), ("skewed", Users::SKEWED)];

fn main() {
    let runs = std::env::args()
        .skip_while(|arg| arg != "--runs")
        .nth(1)
        .map_or(1_000, |runs| runs.parse().expect("--runs takes a number"));
    let policy = RolloutPolicy::recommended();
    let alpha = 1.0 - policy.analysis.confidence;
    println!("<!-- cargo run --release -p reco-rollout --example sample_size -->");
    println!(
        "Command: `cargo run --release -p reco-rollout --example sample_size` (seeded, {runs} runs per row; \
         {IMPRESSIONS_PER_MINUTE} impressions a minute from 100,000 users, base CTR {:.0}%)\n",
        100.0 * BASE_CTR
    );
    println!(
        "Users: *identical* (what the binomial variance assumes); *MovieLens fit* (log-activity σ 0.88, per-user CTR Beta of concentration 8.5, fitted to ml-100k); *skewed* (σ 1.5, concentration 5).\n"
    );
    println!(
        "Tests: *independent* is the CTR test with the variance of independent impressions (the test before user groups); *user groups* measures the variance across the 1,000 user groups; *+ CUPED* adjusts by each group's CTR over the day before the rollout.\n"
    );
    println!(
        "*Independent* is emulated by re-dealing each minute's traffic to random groups of its side; the sample ratio \
         check sees the re-dealt counts too, so its holds in those rows are an artifact of the emulation.\n"
    );

    full_rollouts(&policy, runs, alpha);
    impressions_to_decide(&policy, runs, alpha);
    sample_ratio_mismatch(runs);
}

/// A/A and 10%-drop rollouts under the recommended policy.
fn full_rollouts(policy: &RolloutPolicy, runs: usize, alpha: f64) {
    println!("### Whole rollouts under the recommended policy, a look every minute\n");
    println!(
        "Rolled back by the analysis (by a timeout). A/A: false rollbacks, bound α = {alpha:.2} plus 3·√(α(1−α)/n) = {:.3} of binomial slack; drop: power, goal ≥ {POWER:.2}.\n",
        alpha + 3.0 * (alpha * (1.0 - alpha) / runs as f64).sqrt()
    );
    println!("| users | test | A/A rolled back | A/A promoted | A/A held (SRM) | 10% drop rolled back |");
    println!("|---|---|---:|---:|---:|---:|");
    let tests = [
        ("independent", Variance::IndependentPages, 0),
        ("user groups", Variance::UserGroups, 0),
        ("user groups + CUPED", Variance::UserGroups, DAY),
    ];
    for (seed, (name, users)) in (0..).step_by(10).zip(POPULATIONS) {
        for (offset, (test, variance, before_minutes)) in (0..).zip(tests) {
            let traffic = |lift| Traffic { variance, before_minutes, ..Traffic::new(IMPRESSIONS_PER_MINUTE, lift) };
            let aa = simulation::rollouts(policy, users, BASE_CTR, traffic(1.0), runs, seed + offset);
            let drop = simulation::rollouts(policy, users, BASE_CTR, traffic(1.0 - DROP), runs, seed + offset + 5);
            println!(
                "| {name} | {test} | {} | {} | {} | {} |",
                rolled_back(&aa),
                percent(aa.rate(aa.promoted)),
                percent(aa.rate(aa.mismatched)),
                rolled_back(&drop)
            );
        }
    }
    println!();
}

fn rolled_back(tally: &Tally) -> String {
    format!("{} ({})", percent(tally.rate(tally.failed)), percent(tally.rate(tally.timed_out)))
}

/// Canary impressions the sequential test needs to roll back a 10% drop at
/// a fixed 10% weight, with and without CUPED (on the same traffic),
/// against the fixed-sample minimum: the fewest canary impressions at which
/// a one-sided z-test with the variance across user groups (no CUPED)
/// rejects in at least 90% of the runs, found on the same runs.
fn impressions_to_decide(policy: &RolloutPolicy, runs: usize, alpha: f64) {
    let weight = 10;
    let one_step = RolloutPolicy {
        steps: vec![Step::Canary { weight, min_impressions: 0, max_duration: Duration::from_secs(u64::MAX / 4) }],
        ..policy.clone()
    };
    let hours = HORIZON_MINUTES / 60;
    println!("### Canary impressions to roll back a 10% CTR drop (canary {weight}%, a look every minute)\n");
    println!(
        "Same runs for every column, {hours} h at most each. Fixed sample: the fewest canary impressions at which a one-sided \
         z-test at α = {alpha:.2}, variance across user groups, rejects in {:.0}% of the runs. Goal for CUPED: median ≤ 0.5× fixed.\n",
        100.0 * POWER
    );
    println!(
        "| users | fixed sample | sequential, median (p90) | × fixed | + CUPED, median (p90) | × fixed | undecided after {hours} h |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (seed, (name, users)) in (100..).step_by(10).zip(POPULATIONS) {
        let found = decisions(&one_step, users, runs, alpha, seed);
        let describe = |impressions: &[u64], undecided: usize| {
            let median = quantile_or_beyond(impressions, undecided, 0.5);
            let p90 = quantile_or_beyond(impressions, undecided, 0.9);
            let ratio = match (median, found.fixed_sample) {
                (Some(median), Some(fixed)) => format!("{:.2}", median as f64 / fixed as f64),
                _ => "–".to_owned(),
            };
            (format!("{} ({})", shown(median), shown(p90)), ratio)
        };
        let (plain, plain_ratio) = describe(&found.plain, found.plain_undecided);
        let (cuped, cuped_ratio) = describe(&found.cuped, found.cuped_undecided);
        println!(
            "| {name} | {} | {plain} | {plain_ratio} | {cuped} | {cuped_ratio} | {} / {} |",
            shown(found.fixed_sample),
            found.plain_undecided,
            found.cuped_undecided
        );
    }
    println!();
}

/// How long each run of [`decisions`] may go on.
const HORIZON_MINUTES: u64 = 6 * 60;

/// Canary impressions at each run's rollback, with and without CUPED, and the fixed-sample minimum.
struct Decisions {
    plain: Vec<u64>,
    plain_undecided: usize,
    cuped: Vec<u64>,
    cuped_undecided: usize,
    fixed_sample: Option<u64>,
}

fn decisions(policy: &RolloutPolicy, users: Users, runs: usize, alpha: f64, seed: u64) -> Decisions {
    let mut rng = StdRng::seed_from_u64(seed);
    let population = Population::draw(users, BASE_CTR, &mut rng);
    let traffic = Traffic { before_minutes: DAY, ..Traffic::new(IMPRESSIONS_PER_MINUTE, 1.0 - DROP) };
    let z_alpha = Normal::new(0.0, 1.0).expect("the standard normal is valid").inverse_cdf(1.0 - alpha);
    let minutes = HORIZON_MINUTES as usize;
    // Per minute: runs whose fixed-sample test rejects, and the canary impressions so far.
    let mut rejections = vec![0_usize; minutes];
    let mut canary_impressions = vec![0_u64; minutes];
    let (mut plain, mut cuped) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        let mut run = simulation::Canary::new(&population, traffic, policy, &mut rng);
        let (mut plain_at, mut cuped_at) = (None, None);
        for minute in 0..minutes {
            run.minute();
            let window = run.window();
            let without = WindowMetrics { before: Default::default(), ..window.clone() };
            let report = analysis::analyse_canary_steps(policy, 0, &[], &without);
            canary_impressions[minute] += report.canary_impressions;
            if let Some(estimate) = report.estimate {
                let z = (estimate.stable.ctr - estimate.canary.ctr)
                    / (estimate.stable.variance + estimate.canary.variance).sqrt();
                rejections[minute] += usize::from(z >= z_alpha);
            }
            if plain_at.is_none() && report.verdict == AnalysisVerdict::Fail {
                plain_at = Some(report.canary_impressions);
            }
            if cuped_at.is_none()
                && analysis::analyse_canary_steps(policy, 0, &[], window).verdict == AnalysisVerdict::Fail
            {
                cuped_at = Some(report.canary_impressions);
            }
        }
        plain.extend(plain_at);
        cuped.extend(cuped_at);
    }
    let fixed_sample = (0..minutes)
        .find(|&minute| rejections[minute] as f64 >= POWER * runs as f64)
        .map(|minute| canary_impressions[minute] / runs as u64);
    let (plain_undecided, cuped_undecided) = (runs - plain.len(), runs - cuped.len());
    plain.sort_unstable();
    cuped.sort_unstable();
    Decisions { plain, plain_undecided, cuped, cuped_undecided, fixed_sample }
}

/// The `q` quantile of all runs, where `undecided` runs count as beyond the
/// horizon: `None` when the quantile falls among them.
fn quantile_or_beyond(decided: &[u64], undecided: usize, q: f64) -> Option<u64> {
    let rank = (q * (decided.len() + undecided) as f64).ceil() as usize;
    decided.get(rank.max(1) - 1).copied()
}

fn shown(impressions: Option<u64>) -> String {
    impressions.map_or_else(|| format!("> {} h", HORIZON_MINUTES / 60), |impressions| impressions.to_string())
}

/// Minutes until a 45/55 split at weight 50 is flagged, and the A/A false alarm rate.
fn sample_ratio_mismatch(runs: usize) {
    let half = RolloutPolicy {
        steps: vec![Step::Canary {
            weight: 50,
            min_impressions: u64::MAX,
            max_duration: Duration::from_secs(6 * 3600),
        }],
        ..RolloutPolicy::recommended()
    };
    println!("### Sample ratio mismatch at weight 50%\n");
    println!(
        "The canary gets 45% of the traffic instead of 50%; A/A: a sound split (false alarms, α = {}). Minutes and impressions (both sides) until the rollout is held.\n",
        analysis::SRM_ALPHA
    );
    println!("| users | 45/55: flagged | minutes, median (p90) | impressions, median | sound split: flagged |");
    println!("|---|---:|---:|---:|---:|");
    for (seed, (name, users)) in (200..).step_by(10).zip(POPULATIONS) {
        let mut rng = StdRng::seed_from_u64(seed);
        let population = Population::draw(users, BASE_CTR, &mut rng);
        let skewed = Traffic { canary_traffic: 0.9, ..Traffic::new(IMPRESSIONS_PER_MINUTE, 1.0) };
        let mut minutes: Vec<u64> = (0..runs)
            .filter_map(|_| match simulation::simulate_rollout(&half, &population, skewed, &mut rng) {
                simulation::Outcome::Mismatch { minute } => Some(minute as u64),
                _ => None,
            })
            .collect();
        minutes.sort_unstable();
        let sound =
            simulation::rollouts(&half, users, BASE_CTR, Traffic::new(IMPRESSIONS_PER_MINUTE, 1.0), runs, seed + 1);
        let median = quantile(&minutes, 0.5);
        println!(
            "| {name} | {} | {median} ({}) | {} | {} |",
            percent(minutes.len() as f64 / runs as f64),
            quantile(&minutes, 0.9),
            median * IMPRESSIONS_PER_MINUTE,
            percent(sound.rate(sound.mismatched))
        );
    }
    println!();
}

fn percent(fraction: f64) -> String {
    format!("{:.1}%", 100.0 * fraction)
}

fn quantile(sorted: &[u64], q: f64) -> u64 {
    reco_runtime::stats::nearest_rank(sorted, q).unwrap_or(0)
}
