//! Exact top-k by brute force over a row-major matrix: the oracle for tests and for the ANN benchmark's recall.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::Hit;

/// Dot product, written as 8 independent accumulators so the compiler vectorises it without `-ffast-math`.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, ra) = a.as_chunks::<8>();
    let (cb, rb) = b.as_chunks::<8>();
    for (x, y) in ca.iter().zip(cb) {
        for ((acc, x), y) in acc.iter_mut().zip(x).zip(y) {
            *acc += x * y;
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Min-heap entry: the worst kept hit is on top. Ties on score keep the lower id (deterministic order).
#[derive(PartialEq)]
struct Entry(Hit);

impl Eq for Entry {}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.score.total_cmp(&self.0.score).then(self.0.id.cmp(&other.0.id))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Best-first order used for results: score descending, then id ascending.
pub fn best_first(a: &Hit, b: &Hit) -> Ordering {
    b.score.total_cmp(&a.score).then(a.id.cmp(&b.id))
}

/// Exact top-`k` by dot product of `query` against the rows of `matrix` (row `i` has id `i`), keeping only
/// rows for which `keep(id)` is true. Single-threaded; see [`top_k_parallel`].
pub fn top_k(matrix: &[f32], dim: usize, query: &[f32], k: usize, keep: impl Fn(u64) -> bool) -> Vec<Hit> {
    top_k_rows(matrix, dim, 0, query, k, &keep)
}

fn top_k_rows(
    matrix: &[f32],
    dim: usize,
    first_id: u64,
    query: &[f32],
    k: usize,
    keep: &dyn Fn(u64) -> bool,
) -> Vec<Hit> {
    if k == 0 || dim == 0 {
        return Vec::new();
    }
    let mut heap: BinaryHeap<Entry> = BinaryHeap::with_capacity(k + 1);
    for (id, row) in (first_id..).zip(matrix.chunks_exact(dim)) {
        let score = dot(row, query);
        if heap.len() == k && heap.peek().is_some_and(|worst| score <= worst.0.score) {
            continue;
        }
        if !keep(id) {
            continue;
        }
        heap.push(Entry(Hit { id, score }));
        if heap.len() > k {
            heap.pop();
        }
    }
    let mut hits: Vec<Hit> = heap.into_iter().map(|e| e.0).collect();
    hits.sort_by(best_first);
    hits
}

/// [`top_k`] split over `threads` scoped threads (row ranges), merged at the end.
pub fn top_k_parallel(
    matrix: &[f32],
    dim: usize,
    query: &[f32],
    k: usize,
    threads: usize,
    keep: &(dyn Fn(u64) -> bool + Sync),
) -> Vec<Hit> {
    if dim == 0 {
        return Vec::new();
    }
    let rows = matrix.len() / dim;
    let per = rows.div_ceil(threads.max(1)).max(1);
    let mut hits: Vec<Hit> = std::thread::scope(|s| {
        let handles: Vec<_> = matrix
            .chunks(per * dim)
            .enumerate()
            .map(|(i, chunk)| s.spawn(move || top_k_rows(chunk, dim, (i * per) as u64, query, k, keep)))
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    hits.sort_by(best_first);
    hits.truncate(k);
    hits
}

/// Fraction of `truth`'s first `n` ids found among `found`'s first `n`.
pub fn recall_at(found: &[Hit], truth: &[Hit], n: usize) -> f64 {
    let truth: std::collections::HashSet<u64> = truth.iter().take(n).map(|h| h.id).collect();
    if truth.is_empty() {
        return 1.0;
    }
    let got = found.iter().take(n).filter(|h| truth.contains(&h.id)).count();
    got as f64 / truth.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive_sum_for_all_tail_lengths() {
        for len in 0..20 {
            let a: Vec<f32> = (0..len).map(|i| i as f32 * 0.5 - 2.0).collect();
            let b: Vec<f32> = (0..len).map(|i| 1.0 - i as f32 * 0.25).collect();
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-4, "len {len}");
        }
    }

    #[test]
    fn top_k_orders_best_first_and_filters() {
        // Rows: scores against [1, 0] are 0.0, 3.0, 1.0, 2.0.
        let m = [0.0, 1.0, 3.0, 0.0, 1.0, 5.0, 2.0, 0.0];
        let q = [1.0, 0.0];
        let ids = |h: Vec<Hit>| h.into_iter().map(|h| h.id).collect::<Vec<_>>();
        assert_eq!(ids(top_k(&m, 2, &q, 2, |_| true)), vec![1, 3]);
        assert_eq!(ids(top_k(&m, 2, &q, 10, |id| id != 1)), vec![3, 2, 0]);
        assert_eq!(ids(top_k_parallel(&m, 2, &q, 3, 3, &|_| true)), vec![1, 3, 2]);
        assert!(top_k(&m, 2, &q, 0, |_| true).is_empty());
    }

    #[test]
    fn recall_counts_overlap_of_prefixes() {
        let h = |id| Hit { id, score: 0.0 };
        assert_eq!(recall_at(&[h(1), h(2)], &[h(2), h(3)], 2), 0.5);
        assert_eq!(recall_at(&[], &[], 10), 1.0);
    }
}
