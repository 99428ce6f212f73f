//! Top-K ranking metrics. Pure.
//!
//! Per user: Recall, NDCG, MAP, MRR and HitRate at each K over a ranked list
//! and the set of relevant items; over users: their means, catalogue
//! coverage (share of items recommended to anyone) and average popularity of
//! recommended items (train interactions per item, a popularity-bias
//! measure). MAP divides by `min(|relevant|, K)` and NDCG's ideal DCG puts
//! `min(|relevant|, K)` hits first, as RecBole does.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

/// Metric values of one user at one K.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct UserMetrics {
    pub recall: f64,
    pub ndcg: f64,
    pub map: f64,
    pub mrr: f64,
    pub hit: f64,
}

/// Metrics of the first `k` entries of `ranked` against `relevant`.
pub fn user_metrics(ranked: &[u32], relevant: &HashSet<u32>, k: usize) -> UserMetrics {
    if relevant.is_empty() {
        return UserMetrics::default();
    }
    let mut hits = 0usize;
    let mut dcg = 0.0;
    let mut ap = 0.0;
    let mut mrr = 0.0;
    for (rank, item) in ranked.iter().take(k).enumerate() {
        if relevant.contains(item) {
            hits += 1;
            dcg += 1.0 / ((rank + 2) as f64).log2();
            ap += hits as f64 / (rank + 1) as f64;
            if mrr == 0.0 {
                mrr = 1.0 / (rank + 1) as f64;
            }
        }
    }
    let ideal_hits = relevant.len().min(k);
    let idcg: f64 = (0..ideal_hits).map(|r| 1.0 / ((r + 2) as f64).log2()).sum();
    UserMetrics {
        recall: hits as f64 / relevant.len() as f64,
        ndcg: dcg / idcg,
        map: ap / ideal_hits as f64,
        mrr,
        hit: if hits > 0 { 1.0 } else { 0.0 },
    }
}

/// Accumulates per-user metrics at several K into means.
#[derive(Debug, Clone)]
pub struct MetricsAccumulator {
    ks: Vec<usize>,
    sums: Vec<UserMetrics>,
    recommended: Vec<HashSet<u32>>,
    popularity_sum: Vec<f64>,
    n_users: usize,
    n_items: usize,
}

impl MetricsAccumulator {
    pub fn new(ks: &[usize], n_items: usize) -> Self {
        MetricsAccumulator {
            ks: ks.to_vec(),
            sums: vec![UserMetrics::default(); ks.len()],
            recommended: vec![HashSet::new(); ks.len()],
            popularity_sum: vec![0.0; ks.len()],
            n_users: 0,
            n_items,
        }
    }

    /// Add one user; users without relevant items are skipped.
    /// `popularity[i]` is item `i`'s train interaction count.
    pub fn add(&mut self, ranked: &[u32], relevant: &HashSet<u32>, popularity: &[u32]) {
        if relevant.is_empty() {
            return;
        }
        self.n_users += 1;
        for (j, &k) in self.ks.iter().enumerate() {
            let m = user_metrics(ranked, relevant, k);
            let s = &mut self.sums[j];
            s.recall += m.recall;
            s.ndcg += m.ndcg;
            s.map += m.map;
            s.mrr += m.mrr;
            s.hit += m.hit;
            let top = &ranked[..k.min(ranked.len())];
            self.recommended[j].extend(top.iter().copied());
            if !top.is_empty() {
                let pop: f64 = top.iter().map(|&i| popularity.get(i as usize).copied().unwrap_or(0) as f64).sum();
                self.popularity_sum[j] += pop / top.len() as f64;
            }
        }
    }

    /// Means as `name@k → value`, plus `users`.
    pub fn finish(&self) -> BTreeMap<String, f64> {
        let n = self.n_users.max(1) as f64;
        let mut out = BTreeMap::new();
        for (j, &k) in self.ks.iter().enumerate() {
            let s = &self.sums[j];
            out.insert(format!("recall@{k}"), s.recall / n);
            out.insert(format!("ndcg@{k}"), s.ndcg / n);
            out.insert(format!("map@{k}"), s.map / n);
            out.insert(format!("mrr@{k}"), s.mrr / n);
            out.insert(format!("hit@{k}"), s.hit / n);
            out.insert(format!("coverage@{k}"), self.recommended[j].len() as f64 / self.n_items.max(1) as f64);
            out.insert(format!("avg_popularity@{k}"), self.popularity_sum[j] / n);
        }
        out.insert("users".into(), self.n_users as f64);
        out
    }
}

/// One model's NDCG@K against another's on the same users: the mean of the per-user differences
/// with its 95% confidence interval (normal approximation, fine for the hundreds of users an
/// evaluation has). Pairing removes the users' own spread, so a gain far smaller than the
/// spread of the means across users can still be told from noise.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PairedDifference {
    pub metric: &'static str,
    pub k: usize,
    pub users: usize,
    pub mean: f64,
    pub ci95_low: f64,
    pub ci95_high: f64,
}

/// NDCG@`k` of `ranked` minus that of `baseline`, user by user (`relevant[u]` for both).
pub fn paired_ndcg_difference(
    ranked: &[Vec<u32>],
    baseline: &[Vec<u32>],
    relevant: &[HashSet<u32>],
    k: usize,
) -> PairedDifference {
    let differences: Vec<f64> = ranked
        .iter()
        .zip(baseline)
        .zip(relevant)
        .map(|((a, b), rel)| user_metrics(a, rel, k).ndcg - user_metrics(b, rel, k).ndcg)
        .collect();
    let n = differences.len();
    let mean = if n == 0 { 0.0 } else { differences.iter().sum::<f64>() / n as f64 };
    let variance =
        if n < 2 { 0.0 } else { differences.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1) as f64 };
    let half = if n == 0 { 0.0 } else { 1.96 * (variance / n as f64).sqrt() };
    PairedDifference { metric: "ndcg", k, users: n, mean, ci95_low: mean - half, ci95_high: mean + half }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u32]) -> HashSet<u32> {
        v.iter().copied().collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn hand_computed_example() {
        // Relevant {1, 3}; ranked 5 1 7 3: hits at ranks 2 and 4.
        let m = user_metrics(&[5, 1, 7, 3], &set(&[1, 3]), 10);
        assert!(close(m.recall, 1.0));
        assert!(close(m.mrr, 0.5));
        assert!(close(m.hit, 1.0));
        assert!(close(m.map, (1.0 / 2.0 + 2.0 / 4.0) / 2.0));
        let dcg = 1.0 / 3f64.log2() + 1.0 / 5f64.log2();
        let idcg = 1.0 + 1.0 / 3f64.log2();
        assert!(close(m.ndcg, dcg / idcg));
        let m2 = user_metrics(&[5, 1, 7, 3], &set(&[1, 3]), 2);
        assert!(close(m2.recall, 0.5));
        assert!(close(m2.map, 0.5 / 2.0));
    }

    #[test]
    fn a_paired_difference_is_the_mean_of_per_user_differences_with_its_interval() {
        let relevant = [set(&[1]), set(&[2]), set(&[3])];
        // The model finds user 0's item at rank 1 where the baseline had it at rank 2; the rest tie.
        let model = [vec![1, 9], vec![2, 9], vec![9, 8]];
        let baseline = [vec![9, 1], vec![2, 9], vec![9, 8]];
        let d = paired_ndcg_difference(&model, &baseline, &relevant, 2);
        let gain = 1.0 - 1.0 / 3f64.log2();
        assert_eq!(d.users, 3);
        assert!(close(d.mean, gain / 3.0), "{d:?}");
        // sd of (gain, 0, 0) is gain/sqrt(3); the half-width 1.96 sd / sqrt(3).
        assert!(close(d.ci95_high - d.mean, 1.96 * gain / 3.0), "{d:?}");
        assert!(d.ci95_low < 0.0, "three users cannot show this gain is real: {d:?}");
        let same = paired_ndcg_difference(&model, &model, &relevant, 2);
        assert_eq!((same.mean, same.ci95_low, same.ci95_high), (0.0, 0.0, 0.0));
        assert_eq!(paired_ndcg_difference(&[], &[], &[], 10).users, 0);
    }

    #[test]
    fn perfect_and_empty_rankings() {
        let m = user_metrics(&[1, 2, 3], &set(&[1, 2, 3]), 10);
        assert!(close(m.ndcg, 1.0) && close(m.map, 1.0) && close(m.recall, 1.0));
        assert_eq!(user_metrics(&[4, 5], &set(&[1]), 10), UserMetrics::default());
        assert_eq!(user_metrics(&[1], &set(&[]), 10), UserMetrics::default());
    }

    #[test]
    fn accumulator_averages_over_users_with_relevant_items() {
        let mut acc = MetricsAccumulator::new(&[1, 2], 4);
        let pop = [10, 20, 30, 40];
        acc.add(&[0, 1], &set(&[0]), &pop);
        acc.add(&[2, 3], &set(&[1]), &pop);
        acc.add(&[2, 3], &set(&[]), &pop);
        let m = acc.finish();
        assert!(close(m["hit@1"], 0.5));
        assert!(close(m["users"], 2.0));
        assert!(close(m["coverage@1"], 0.5));
        assert!(close(m["coverage@2"], 1.0));
        assert!(close(m["avg_popularity@1"], (10.0 + 30.0) / 2.0));
    }
}
