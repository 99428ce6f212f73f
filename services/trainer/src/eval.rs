//! Full-ranking evaluation: every candidate source scores all items for each
//! evaluated user, the user's known items (train, or train and validation)
//! are removed, and the top K is compared with the held-out items through
//! [`crate::metrics`].

use std::collections::{BTreeMap, HashSet};

use tch::{Kind, Tensor};

use crate::error::Result;
use crate::metrics::MetricsAccumulator;
use crate::validate::Interaction;

/// Anything that scores every item for a set of users: `[users, n_items]`.
pub trait Scorer {
    fn scores(&self, users: &[u32]) -> Result<Tensor>;
}

/// Users to evaluate with their held-out items and the items to exclude.
#[derive(Debug, Clone, Default)]
pub struct EvalSet {
    pub users: Vec<u32>,
    pub relevant: Vec<HashSet<u32>>,
    pub exclude: Vec<Vec<u32>>,
}

impl EvalSet {
    /// Users that have at least one `target` interaction; `known[u]` is excluded from their ranking.
    pub fn new(known: &[Vec<Interaction>], target: &[Vec<Interaction>]) -> Self {
        let mut s = EvalSet::default();
        for (u, t) in target.iter().enumerate() {
            if t.is_empty() {
                continue;
            }
            s.users.push(u as u32);
            s.relevant.push(t.iter().map(|x| x.item).collect());
            let mut ex: Vec<u32> = known[u].iter().map(|x| x.item).collect();
            ex.sort_unstable();
            ex.dedup();
            s.exclude.push(ex);
        }
        s
    }

    /// The first `n` users only (for quick checks).
    pub fn truncated(mut self, n: usize) -> Self {
        self.users.truncate(n);
        self.relevant.truncate(n);
        self.exclude.truncate(n);
        self
    }
}

const CHUNK: usize = 512;

/// Ranked top-`k` item lists of every user of `set`, known items excluded.
pub fn top_k(scorer: &dyn Scorer, set: &EvalSet, k: usize) -> Result<Vec<Vec<u32>>> {
    let mut out = Vec::with_capacity(set.users.len());
    for (c, users) in set.users.chunks(CHUNK).enumerate() {
        let scores = tch::no_grad(|| scorer.scores(users))?.to_kind(Kind::Float).contiguous();
        let n_items = scores.size()[1];
        let mut flat = Vec::new();
        for (r, _) in users.iter().enumerate() {
            flat.extend(set.exclude[c * CHUNK + r].iter().map(|&i| r as i64 * n_items + i as i64));
        }
        let masked = scores
            .view([-1])
            .index_fill(0, &Tensor::from_slice(&flat), f64::NEG_INFINITY)
            .view([users.len() as i64, n_items]);
        let (_, idx) = masked.topk(k.min(n_items as usize) as i64, 1, true, true);
        let idx = Vec::<i64>::try_from(idx.flatten(0, -1))?;
        let kk = k.min(n_items as usize);
        out.extend(idx.chunks(kk).map(|row| row.iter().map(|&i| i as u32).collect()));
    }
    Ok(out)
}

/// Mean metrics at each of `ks` (see [`crate::metrics`]).
pub fn evaluate(scorer: &dyn Scorer, set: &EvalSet, ks: &[usize], popularity: &[u32]) -> Result<BTreeMap<String, f64>> {
    let kmax = ks.iter().copied().max().unwrap_or(10);
    let ranked = top_k(scorer, set, kmax)?;
    Ok(evaluate_ranked(&ranked, set, ks, popularity))
}

/// Metrics of precomputed ranked lists (one per user of `set`).
pub fn evaluate_ranked(ranked: &[Vec<u32>], set: &EvalSet, ks: &[usize], popularity: &[u32]) -> BTreeMap<String, f64> {
    let mut acc = MetricsAccumulator::new(ks, popularity.len());
    for (r, rel) in ranked.iter().zip(&set.relevant) {
        acc.add(r, rel, popularity);
    }
    acc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Tensor);
    impl Scorer for Fixed {
        fn scores(&self, users: &[u32]) -> Result<Tensor> {
            let idx = Tensor::from_slice(&users.iter().map(|&u| u as i64).collect::<Vec<_>>());
            Ok(self.0.index_select(0, &idx))
        }
    }

    fn x(user: u32, item: u32) -> Interaction {
        Interaction { user, item, rating: 1.0, timestamp: 0 }
    }

    #[test]
    fn known_items_are_excluded_from_the_ranking() {
        // Two users, four items; user 0 knows item 3 (the best scored).
        let s = Fixed(Tensor::from_slice(&[0.1f32, 0.2, 0.3, 0.9, 0.4, 0.3, 0.2, 0.1]).view([2, 4]));
        let known = vec![vec![x(0, 3)], vec![]];
        let target = vec![vec![x(0, 2)], vec![x(1, 0)]];
        let set = EvalSet::new(&known, &target);
        let top = top_k(&s, &set, 2).unwrap();
        assert_eq!(top, vec![vec![2, 1], vec![0, 1]]);
        let m = evaluate(&s, &set, &[1], &[1, 1, 1, 1]).unwrap();
        assert_eq!(m["hit@1"], 1.0);
    }
}
