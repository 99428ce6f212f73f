//! Seeded simulations of whole rollouts under the recommended policy:
//! the A/A false-rollback rate stays within α and a 10% CTR drop is rolled
//! back before the last step ends. Traffic: 20,000 impressions a minute,
//! the least the recommended policy is made for; one look (analysis and
//! `decide`) a minute. See `support/simulation.rs`.

mod support;

use rand::SeedableRng;
use rand::rngs::StdRng;
use reco_rollout::policy::RolloutPolicy;
use support::simulation::{self, Outcome, Traffic};

const RUNS: usize = 1_000;
const IMPRESSIONS_PER_MINUTE: u64 = 20_000;

/// Share of `RUNS` seeded rollouts that end rolled back (by analysis or timeout).
fn rollback_rate(stable_ctr: f64, canary_ctr: f64, seed: u64) -> f64 {
    let policy = RolloutPolicy::recommended();
    let traffic = Traffic { impressions_per_minute: IMPRESSIONS_PER_MINUTE, stable_ctr, canary_ctr };
    let mut rng = StdRng::seed_from_u64(seed);
    let rolled_back =
        (0..RUNS).filter(|_| simulation::simulate_rollout(&policy, traffic, &mut rng) != Outcome::Promoted).count();
    rolled_back as f64 / RUNS as f64
}

/// A/A: at most α, plus three binomial standard errors of slack for the
/// finite number of runs: `α + 3 √(α (1 − α) / n)` (≈ 7.1% at α = 5%).
fn assert_false_rollbacks_within_alpha(ctr: f64, seed: u64) {
    let alpha = 1.0 - RolloutPolicy::recommended().analysis.confidence;
    let bound = alpha + 3.0 * (alpha * (1.0 - alpha) / RUNS as f64).sqrt();
    let rate = rollback_rate(ctr, ctr, seed);
    assert!(rate <= bound, "A/A at CTR {ctr}: {rate} rolled back, bound {bound}");
}

/// A 10% relative drop: rolled back in at least 90% of rollouts.
fn assert_drop_caught(ctr: f64, seed: u64) {
    let rate = rollback_rate(ctr, 0.9 * ctr, seed);
    assert!(rate >= 0.90, "10% drop at CTR {ctr}: only {rate} rolled back");
}

#[test]
fn a_a_false_rollbacks_at_2_percent() {
    assert_false_rollbacks_within_alpha(0.02, 11);
}

#[test]
fn a_a_false_rollbacks_at_5_percent() {
    assert_false_rollbacks_within_alpha(0.05, 12);
}

#[test]
fn a_a_false_rollbacks_at_10_percent() {
    assert_false_rollbacks_within_alpha(0.10, 13);
}

#[test]
fn ten_percent_drop_caught_at_2_percent() {
    assert_drop_caught(0.02, 21);
}

#[test]
fn ten_percent_drop_caught_at_5_percent() {
    assert_drop_caught(0.05, 22);
}

#[test]
fn ten_percent_drop_caught_at_10_percent() {
    assert_drop_caught(0.10, 23);
}
