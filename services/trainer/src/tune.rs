//! Hyper-parameter search on validation (`reco tune`): random search over
//! the two-tower and ranker settings, each trial a whole training run with
//! test evaluation off, scored by the served model's validation NDCG@10.
//! Trial 0 is the given options unchanged, so every search reports its
//! baseline. Test is never read here; the chosen settings are reported on
//! test only afterwards, by `reco train`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::artifacts::write_json;
use crate::error::{Result, TrainError};
use crate::pipeline::{TrainOptions, train};
use crate::ranking::RankerOptions;
use crate::retrieval::TwoTowerOptions;

/// The metric trials are compared by: the served model on validation.
pub const OBJECTIVE: &str = "validation ndcg@10 of two_tower_ranker (the served model)";

/// The searched settings of one trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub two_tower: TwoTowerOptions,
    pub ranker: RankerOptions,
}

/// One finished trial.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trial {
    pub trial: usize,
    pub settings: Candidate,
    /// The objective.
    pub score: f64,
    /// The served model's validation metrics.
    pub validation: std::collections::BTreeMap<String, f64>,
    /// The two-tower's own validation NDCG@10 and its early-stopped epoch.
    pub two_tower_ndcg_at_10: f64,
    pub two_tower_best_epoch: usize,
    pub wall_seconds: f64,
}

/// `tuning.json`: every trial and the best.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TuningReport {
    pub objective: String,
    /// The training seed every trial used.
    pub seed: u64,
    /// The seed of the random search.
    pub search_seed: u64,
    pub trials: Vec<Trial>,
    /// Index into `trials` of the highest score.
    pub best: usize,
}

fn pick<T: Copy>(rng: &mut StdRng, values: &[T]) -> T {
    *values.choose(rng).expect("non-empty choice list")
}

/// Draws one candidate around `base`: the same structure, the searched
/// values replaced. Pure given the RNG.
pub fn sample(base: &Candidate, rng: &mut StdRng) -> Candidate {
    let mut c = base.clone();
    let t = &mut c.two_tower;
    t.learning_rate = 10f64.powf(rng.random_range(-3.3..-2.3));
    t.temperature = pick(rng, &[0.05, 0.07, 0.1, 0.15]);
    t.out_dim = pick(rng, &[32, 64, 128]);
    t.embed_dim = pick(rng, &[32, 64]);
    t.hidden_dim = pick(rng, &[128, 256, 512]);
    t.dropout = pick(rng, &[0.0, 0.1, 0.2]);
    t.weight_decay = pick(rng, &[0.0, 1e-6, 1e-5]);
    t.batch_size = pick(rng, &[256, 512, 1024]);
    t.uniform_negatives = pick(rng, &[0, 128, 256, 512]);
    t.hard_negatives = pick(rng, &[0, 2, 4, 8]);
    t.hard_skip = pick(rng, &[2, 5, 10]);
    let r = &mut c.ranker;
    r.learning_rate = 10f64.powf(rng.random_range(-3.3..-2.3));
    r.hidden_dim = pick(rng, &[64, 128, 256]);
    r.cross_layers = pick(rng, &[1, 2, 3]);
    r.embed_dim = pick(rng, &[8, 16, 32]);
    r.dropout = pick(rng, &[0.0, 0.1, 0.2]);
    r.per_source = pick(rng, &[50, 100, 200]);
    r.popular = pick(rng, &[25, 50, 100]);
    c
}

/// The candidates of a search: `base` first, then `trials - 1` draws.
pub fn candidates(base: &Candidate, trials: usize, search_seed: u64) -> Vec<Candidate> {
    let mut rng = StdRng::seed_from_u64(search_seed);
    std::iter::once(base.clone()).chain((1..trials).map(|_| sample(base, &mut rng))).take(trials).collect()
}

/// The index of the highest score (the first on ties).
pub fn best_index(trials: &[Trial]) -> usize {
    trials.iter().enumerate().fold(0, |best, (i, t)| if t.score > trials[best].score { i } else { best })
}

fn trial_dir(out: &Path, trial: usize) -> PathBuf {
    out.join(format!("trial-{trial:02}"))
}

/// Runs the search, one trial after the other, writing `out/tuning.json`
/// after each (a long search can be watched, and its trials kept if it is
/// stopped). Trial `i` trains into `out/trial-NN`.
pub fn tune(base: &TrainOptions, trials: usize, search_seed: u64) -> Result<TuningReport> {
    if trials == 0 {
        return Err(TrainError::Options("--trials must be at least 1".into()));
    }
    let start = Candidate { two_tower: base.two_tower.clone(), ranker: base.ranker.clone() };
    let bar = base.progress.bar(trials as u64, "tuning trials");
    let mut report =
        TuningReport { objective: OBJECTIVE.into(), seed: base.seed, search_seed, trials: Vec::new(), best: 0 };
    for (trial, settings) in candidates(&start, trials, search_seed).into_iter().enumerate() {
        let started = Instant::now();
        let opts = TrainOptions {
            out: trial_dir(&base.out, trial),
            two_tower: settings.two_tower.clone(),
            ranker: settings.ranker.clone(),
            evaluate_test: false,
            resume: false,
            ..base.clone()
        };
        let summary = train(&opts)?;
        let served = summary.metrics.validation.get("two_tower_ranker").cloned().unwrap_or_default();
        let score = served.get("ndcg@10").copied().unwrap_or(f64::NAN);
        let two_tower = summary.metrics.validation.get("two_tower").and_then(|m| m.get("ndcg@10")).copied();
        tracing::info!(trial, score, wall_seconds = started.elapsed().as_secs_f64(), "tuning trial");
        report.trials.push(Trial {
            trial,
            settings,
            score,
            validation: served,
            two_tower_ndcg_at_10: two_tower.unwrap_or(f64::NAN),
            two_tower_best_epoch: summary.report.two_tower_best_epoch,
            wall_seconds: started.elapsed().as_secs_f64(),
        });
        report.best = best_index(&report.trials);
        write_json(&base.out, "tuning.json", &report)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Candidate {
        Candidate { two_tower: TwoTowerOptions::default(), ranker: RankerOptions::default() }
    }

    #[test]
    fn the_first_candidate_is_the_baseline_and_the_draws_are_seeded() {
        let a = candidates(&base(), 6, 3);
        assert_eq!(a.len(), 6);
        assert_eq!(a[0], base());
        assert_eq!(a, candidates(&base(), 6, 3));
        assert_ne!(a[1..], candidates(&base(), 6, 4)[1..]);
        assert_eq!(candidates(&base(), 1, 3), vec![base()]);
    }

    #[test]
    fn draws_stay_in_their_ranges_and_keep_what_is_not_searched() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..200 {
            let c = sample(&base(), &mut rng);
            assert!((10f64.powf(-3.3)..10f64.powf(-2.3)).contains(&c.two_tower.learning_rate));
            assert!([32, 64, 128].contains(&c.two_tower.out_dim));
            assert!(c.two_tower.batch_size >= 256);
            assert_eq!(c.two_tower.max_epochs, base().two_tower.max_epochs);
            assert_eq!(c.ranker.value_weights, base().ranker.value_weights);
        }
    }

    #[test]
    fn best_is_the_highest_score_and_the_first_on_ties() {
        let trial = |trial, score| Trial {
            trial,
            settings: base(),
            score,
            validation: Default::default(),
            two_tower_ndcg_at_10: 0.0,
            two_tower_best_epoch: 1,
            wall_seconds: 1.0,
        };
        assert_eq!(best_index(&[trial(0, 0.1), trial(1, 0.3), trial(2, 0.3), trial(3, 0.2)]), 1);
        assert_eq!(best_index(&[trial(0, 0.1)]), 0);
    }
}
