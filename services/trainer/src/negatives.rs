//! Negative sampling maths for the two-tower loss. Pure.
//!
//! - [`log_q`]: the logQ correction. The softmax candidates of a batch are the
//!   batch's positives (drawn with the train popularity `p_i`) mixed with
//!   `m` uniform draws, so item `i` is expected `B * p_i + m / N` times; its
//!   logit is lowered by the log of that, which removes the popularity bias
//!   of in-batch negatives (Yi et al. 2019, mixed negatives per Yang et al.
//!   2020). Counts are add-one smoothed so that items absent from train keep
//!   a finite correction.
//! - [`hard_window`]: hard negatives mined from a cross-batch queue of recent
//!   item embeddings. Queue items are ranked by similarity to the user; the
//!   user's positive and known items are dropped, the `skip` most similar
//!   remaining items are skipped as likely false negatives, and the next
//!   `take` distinct items form the window.

use std::collections::HashSet;

use rand::RngExt;

/// Per-item logQ correction (see the module doc); `counts[i]` = train count of item `i`.
pub fn log_q(counts: &[u32], batch: usize, n_uniform: usize) -> Vec<f32> {
    let n = counts.len().max(1) as f64;
    let total: f64 = counts.iter().map(|&c| c as f64).sum::<f64>() + n;
    counts
        .iter()
        .map(|&c| {
            let p = (c as f64 + 1.0) / total;
            (batch as f64 * p + n_uniform as f64 / n).ln() as f32
        })
        .collect()
}

/// `m` items drawn uniformly with replacement from `0..n_items`.
pub fn uniform_negatives(rng: &mut impl rand::Rng, n_items: usize, m: usize) -> Vec<u32> {
    (0..m).map(|_| rng.random_range(0..n_items as u32)).collect()
}

/// Window of hard negatives for one user over a queue (see the module doc).
/// `order` lists queue rows by decreasing similarity; `ids[row]` is that row's item.
pub fn hard_window(order: &[usize], ids: &[u32], exclude: impl Fn(u32) -> bool, skip: usize, take: usize) -> Vec<u32> {
    let mut seen = HashSet::new();
    order.iter().map(|&row| ids[row]).filter(|&id| !exclude(id) && seen.insert(id)).skip(skip).take(take).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn log_q_is_larger_for_popular_items_and_finite_for_cold_ones() {
        let q = log_q(&[0, 1, 98], 10, 0);
        assert!(q[0] < q[1] && q[1] < q[2]);
        assert!(q.iter().all(|x| x.is_finite()));
        // total = 99 + 3 = 102; p_2 = 99 / 102; expected count 10 * p_2.
        assert!((q[2] - (10.0f64 * 99.0 / 102.0).ln() as f32).abs() < 1e-6);
        // Uniform draws add m / N to every item.
        let qu = log_q(&[0, 1, 98], 10, 30);
        assert!((qu[0] - (10.0f64 / 102.0 + 10.0).ln() as f32).abs() < 1e-6);
    }

    #[test]
    fn uniform_negatives_are_in_range_and_seeded() {
        let mut a = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = rand::rngs::StdRng::seed_from_u64(7);
        let x = uniform_negatives(&mut a, 5, 100);
        assert!(x.iter().all(|&i| i < 5));
        assert_eq!(x, uniform_negatives(&mut b, 5, 100));
    }

    #[test]
    fn hard_window_skips_excluded_duplicates_and_the_top() {
        // Queue rows by decreasing similarity: items 9 (positive), 4, 4, 7, 3, 2, 8.
        let ids = [3, 9, 4, 7, 4, 2, 8];
        let order = [1, 2, 4, 3, 0, 5, 6];
        let w = hard_window(&order, &ids, |id| id == 9 || id == 2, 1, 2);
        // Drop 9 and 2, dedup 4 → [4, 7, 3, 8]; skip 1 → [7, 3].
        assert_eq!(w, vec![7, 3]);
        assert!(hard_window(&order, &ids, |_| true, 0, 3).is_empty());
    }
}
