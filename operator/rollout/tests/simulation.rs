//! Seeded simulations of whole rollouts under the recommended policy, on
//! users who differ in how much they see and click (see
//! `support/simulation.rs`): the A/A false-rollback rate stays within α and
//! a 10% CTR drop is rolled back, and the test that treats impressions as
//! independent breaks the A/A bound on the same users. 20,000 impressions a
//! minute from 100,000 users; one look (analysis and `decide`) a minute.
//! `cargo run --release -p reco-rollout --example sample_size` runs the long
//! version (1,000 runs per row) for BENCHMARKS.md.

#[allow(dead_code)] // shared with examples/sample_size.rs, which uses the rest
mod support;

use reco_rollout::policy::RolloutPolicy;
use support::simulation::{self, Tally, Traffic, Users, Variance};

const RUNS: usize = 200;
const IMPRESSIONS_PER_MINUTE: u64 = 20_000;
const BASE_CTR: f64 = 0.05;
/// A day of pre-rollout traffic for CUPED.
const DAY: u64 = 24 * 60;

fn run(users: Users, lift: f64, variance: Variance, before_minutes: u64, seed: u64) -> Tally {
    let traffic = Traffic { variance, before_minutes, ..Traffic::new(IMPRESSIONS_PER_MINUTE, lift) };
    simulation::rollouts(&RolloutPolicy::recommended(), users, BASE_CTR, traffic, RUNS, seed)
}

/// α plus three binomial standard errors of slack for the finite number of
/// runs: `α + 3 √(α (1 − α) / n)` (≈ 9.6% at α = 5% and 200 runs).
fn a_a_bound() -> f64 {
    let alpha = 1.0 - RolloutPolicy::recommended().analysis.confidence;
    alpha + 3.0 * (alpha * (1.0 - alpha) / RUNS as f64).sqrt()
}

#[test]
fn a_a_false_rollbacks_within_alpha_on_identical_users() {
    let tally = run(Users::IDENTICAL, 1.0, Variance::UserGroups, 0, 11);
    assert!(tally.rate(tally.failed) <= a_a_bound(), "{tally:?}, bound {}", a_a_bound());
}

#[test]
fn a_a_false_rollbacks_within_alpha_on_movielens_users() {
    let tally = run(Users::ML_100K, 1.0, Variance::UserGroups, DAY, 12);
    assert!(tally.rate(tally.failed) <= a_a_bound(), "{tally:?}, bound {}", a_a_bound());
    // CUPED lets most A/A rollouts finish within the policy's time.
    assert!(tally.rate(tally.promoted) >= 0.8, "{tally:?}");
}

#[test]
fn independent_impressions_break_the_a_a_bound_on_movielens_users() {
    let tally = run(Users::ML_100K, 1.0, Variance::IndependentPages, 0, 13);
    assert!(tally.rate(tally.failed) > a_a_bound(), "{tally:?}, bound {}", a_a_bound());
}

#[test]
fn ten_percent_drop_caught_on_movielens_users() {
    let tally = run(Users::ML_100K, 0.9, Variance::UserGroups, DAY, 21);
    assert!(tally.rate(tally.failed + tally.timed_out) >= 0.9, "{tally:?}");
}

#[test]
fn ten_percent_drop_caught_on_identical_users() {
    let tally = run(Users::IDENTICAL, 0.9, Variance::UserGroups, 0, 22);
    assert!(tally.rate(tally.failed + tally.timed_out) >= 0.9, "{tally:?}");
}
