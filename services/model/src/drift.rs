//! Feature drift: how far the ranker's live inputs have moved from the distribution the
//! version was checked on offline.
//!
//! The trainer fits a [`DriftReference`] on the dense rows its served funnel produces for the
//! validation users (the served two-tower, the served candidate counts), cut at the deciles of
//! each feature, and saves it in `ranker.json`. The ranking service counts the rows of sampled
//! requests into the same bins ([`DriftWindow`]) and, window by window, reports the population
//! stability index (PSI) of each feature: `Σ (live − reference) · ln(live / reference)` over the
//! bins. The usual reading: below 0.1 stable, 0.1–0.2 moderate shift, above 0.2 worth a look.

use serde::{Deserialize, Serialize};

use crate::scoring::N_DENSE;

/// The dense ranker features, in [`crate::scoring::dense_features`] order (metric labels).
pub const DENSE_FEATURE_NAMES: [&str; N_DENSE] = [
    "two_tower_score",
    "item_to_item_score",
    "log_popularity",
    "two_tower_rank_weight",
    "item_to_item_rank_weight",
    "popular_rank_weight",
    "log_history_length",
    "two_tower_score_z",
    "item_to_item_score_z",
];

/// Shares below this count as this in the PSI, so that an empty bin does not make it infinite.
const SHARE_FLOOR: f64 = 1e-4;

/// One feature's reference distribution: bins cut at its deciles, and a bin on either side
/// for values outside its range (empty in the reference), so that a shift out of the range
/// shows in the PSI even for a feature the reference saw at a single value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureReference {
    /// Upper bounds of the inner bins but the last, increasing: inner bin `i` holds
    /// `(edges[i-1], edges[i]]` within `[min, max]`. Repeated deciles (a feature that is often
    /// exactly 0) are merged, so there may be fewer than nine.
    pub edges: Vec<f32>,
    /// Share of the reference rows in each bin: below `min`, the `edges.len() + 1` inner bins,
    /// above `max`.
    pub shares: Vec<f64>,
    /// The smallest and largest reference value: live values outside count as out of range.
    pub min: f32,
    pub max: f32,
}

impl FeatureReference {
    /// The bins of `values` (finite, at least one).
    fn fit(mut values: Vec<f32>) -> Self {
        values.sort_by(f32::total_cmp);
        let n = values.len();
        let mut edges: Vec<f32> = (1..10).map(|d| values[(d * n / 10).min(n - 1)]).collect();
        edges.dedup();
        // A top edge at the maximum would leave the last bin empty by construction.
        if edges.last() == values.last() {
            edges.pop();
        }
        let bins = edges.len() + 3;
        let mut reference = Self { shares: vec![0.0; bins], edges, min: values[0], max: values[n - 1] };
        for &x in &values {
            let bin = reference.bin(x);
            reference.shares[bin] += 1.0;
        }
        reference.shares.iter_mut().for_each(|s| *s /= n as f64);
        reference
    }

    /// The bin of `x`: 0 below `min`, [`Self::above`] above `max`, an inner bin otherwise.
    fn bin(&self, x: f32) -> usize {
        if x < self.min {
            0
        } else if x > self.max {
            self.above()
        } else {
            1 + self.edges.partition_point(|&edge| edge < x)
        }
    }

    /// The bin of values above `max`, the last.
    fn above(&self) -> usize {
        self.edges.len() + 2
    }
}

/// The reference of every dense feature, saved with the version in `ranker.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftReference {
    /// Rows it was fitted on.
    pub rows: usize,
    /// One per dense feature, in [`DENSE_FEATURE_NAMES`] order.
    pub features: Vec<FeatureReference>,
}

impl DriftReference {
    /// The reference of `rows`; `None` when there are none. Non-finite values are left out.
    pub fn fit(rows: &[[f32; N_DENSE]]) -> Option<Self> {
        let features: Option<Vec<FeatureReference>> = (0..N_DENSE)
            .map(|j| {
                let values: Vec<f32> = rows.iter().map(|r| r[j]).filter(|x| x.is_finite()).collect();
                (!values.is_empty()).then(|| FeatureReference::fit(values))
            })
            .collect();
        Some(Self { rows: rows.len(), features: features? })
    }

    /// Whether it has one well-formed reference per dense feature (a file may be hand-edited).
    pub fn check(&self) -> Result<(), String> {
        if self.features.len() != N_DENSE {
            return Err(format!("{} feature references, expected {N_DENSE}", self.features.len()));
        }
        for (name, f) in DENSE_FEATURE_NAMES.iter().zip(&self.features) {
            let increasing = f.edges.windows(2).all(|w| w[0] < w[1]) && f.edges.iter().all(|e| e.is_finite());
            let shares_ok = f.shares.len() == f.edges.len() + 3
                && f.shares.iter().all(|s| s.is_finite() && *s >= 0.0)
                && (f.shares.iter().sum::<f64>() - 1.0).abs() < 1e-6;
            let range_ok = f.min.is_finite() && f.max.is_finite() && f.min <= f.max;
            if !increasing || !shares_ok || !range_ok {
                return Err(format!("the reference of {name} is malformed (edges, shares or range)"));
            }
        }
        Ok(())
    }
}

/// The population stability index of `observed` bin counts against `expected` shares;
/// `None` when nothing was observed.
pub fn psi(expected: &[f64], observed: &[u64]) -> Option<f64> {
    let total: u64 = observed.iter().sum();
    (total > 0).then(|| {
        expected
            .iter()
            .zip(observed)
            .map(|(&e, &o)| {
                let (e, o) = (e.max(SHARE_FLOOR), (o as f64 / total as f64).max(SHARE_FLOOR));
                (o - e) * (o / e).ln()
            })
            .sum()
    })
}

/// What one live request's rows held that the reference did not expect, feature by feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestCheck {
    /// Non-finite values (not binned).
    pub missing: [u64; N_DENSE],
    /// Values outside the reference's `[min, max]` (binned into the outer bins).
    pub out_of_range: [u64; N_DENSE],
}

/// Live rows of one version, binned as its reference; one window at a time. A window is
/// counted in requests, not rows: the rows of one request share their user's features (a
/// history length repeats on every row), so only many users make a window representative.
#[derive(Debug, Clone)]
pub struct DriftWindow {
    reference: DriftReference,
    counts: Vec<Vec<u64>>,
    requests: usize,
}

impl DriftWindow {
    pub fn new(reference: DriftReference) -> Self {
        let counts = reference.features.iter().map(|f| vec![0; f.shares.len()]).collect();
        Self { reference, counts, requests: 0 }
    }

    /// Counts the rows of one request into the window.
    pub fn observe(&mut self, rows: &[[f32; N_DENSE]]) -> RequestCheck {
        let mut check = RequestCheck::default();
        for row in rows {
            for (j, (feature, counts)) in self.reference.features.iter().zip(&mut self.counts).enumerate() {
                let x = row[j];
                if !x.is_finite() {
                    check.missing[j] += 1;
                    continue;
                }
                let bin = feature.bin(x);
                check.out_of_range[j] += u64::from(bin == 0 || bin == feature.above());
                counts[bin] += 1;
            }
        }
        self.requests += 1;
        check
    }

    /// Requests counted since the window started.
    pub fn requests(&self) -> usize {
        self.requests
    }

    /// The PSI of every feature over the window (`None` for a feature with no finite value),
    /// and a fresh window.
    pub fn close(&mut self) -> [Option<f64>; N_DENSE] {
        let mut out = [None; N_DENSE];
        for (j, (feature, counts)) in self.reference.features.iter().zip(&mut self.counts).enumerate() {
            out[j] = psi(&feature.shares, counts);
            counts.iter_mut().for_each(|c| *c = 0);
        }
        self.requests = 0;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(values: impl Iterator<Item = f32>) -> Vec<[f32; N_DENSE]> {
        values.map(|x| [x; N_DENSE]).collect()
    }

    #[test]
    fn psi_matches_a_hand_computed_case() {
        // Expected 50/50, observed 80/20: 0.3·ln(1.6) + (−0.3)·ln(0.4) = 0.4159.
        let got = psi(&[0.5, 0.5], &[80, 20]).unwrap();
        assert!((got - (0.3 * 1.6f64.ln() - 0.3 * 0.4f64.ln())).abs() < 1e-12, "{got}");
        assert_eq!(psi(&[0.5, 0.5], &[50, 50]), Some(0.0));
        assert_eq!(psi(&[0.5, 0.5], &[0, 0]), None);
        assert!(psi(&[1.0, 0.0], &[0, 10]).unwrap().is_finite(), "an empty reference bin is floored");
    }

    #[test]
    fn deciles_cut_ten_equal_bins_and_repeated_values_merge() {
        let reference = DriftReference::fit(&rows((0..1000).map(|i| i as f32))).unwrap();
        let f = &reference.features[0];
        assert_eq!(f.edges.len(), 9);
        let inner = &f.shares[1..11];
        assert!(inner.iter().all(|s| (s - 0.1).abs() < 0.002), "{:?}", f.shares);
        assert_eq!((f.shares[0], f.shares[11]), (0.0, 0.0), "nothing outside the range");
        assert_eq!((f.min, f.max), (0.0, 999.0));
        reference.check().unwrap();

        // Mostly zeros (a source that rarely returns the item): the zero deciles merge.
        let sparse = DriftReference::fit(&rows((0..1000).map(|i| if i < 700 { 0.0 } else { i as f32 }))).unwrap();
        let f = &sparse.features[0];
        assert_eq!(f.edges[0], 0.0);
        assert!((f.shares[1] - 0.7).abs() < 1e-9, "{:?}", f.shares);
        assert_eq!(f.edges, [0.0, 700.0, 800.0, 900.0]);
        sparse.check().unwrap();
    }

    #[test]
    fn the_same_distribution_is_stable_and_a_shifted_one_crosses_the_alert_level() {
        let reference = DriftReference::fit(&rows((0..10_000).map(|i| (i % 1000) as f32))).unwrap();
        let mut window = DriftWindow::new(reference);
        for request in rows((0..5000).map(|i| ((i * 7) % 1000) as f32)).chunks(50) {
            window.observe(request);
        }
        assert_eq!(window.requests(), 100);
        let same = window.close();
        assert!(same.iter().all(|p| p.unwrap() < 0.01), "{same:?}");
        assert_eq!(window.requests(), 0, "a fresh window");
        // Shifted up by a third of the range.
        let mut outside = 0;
        for request in rows((0..5000).map(|i| ((i * 7) % 1000 + 333) as f32)).chunks(50) {
            outside += window.observe(request).out_of_range[0];
        }
        let shifted = window.close();
        assert!(shifted.iter().all(|p| p.unwrap() > 0.2), "{shifted:?}");
        assert_eq!(outside, 5000 * 333 / 1000, "values above the reference's max");
    }

    #[test]
    fn a_feature_seen_at_one_value_still_shows_a_shift() {
        let reference = DriftReference::fit(&rows(std::iter::repeat_n(1.4, 100))).unwrap();
        assert_eq!(reference.features[0].shares, [0.0, 1.0, 0.0]);
        let mut window = DriftWindow::new(reference);
        window.observe(&[[1.4; N_DENSE]]);
        assert_eq!(window.close()[0], Some(0.0));
        window.observe(&[[3.0; N_DENSE]]);
        assert!(window.close()[0].unwrap() > 5.0, "everything above the only value seen");
    }

    #[test]
    fn non_finite_values_are_missing_not_binned() {
        let mut window = DriftWindow::new(DriftReference::fit(&rows((0..100).map(|i| i as f32))).unwrap());
        let mut row = [1.0; N_DENSE];
        row[2] = f32::NAN;
        let check = window.observe(&[row, row]);
        assert_eq!((check.missing[2], check.missing[0]), (2, 0));
        let psi = window.close();
        assert_eq!(psi[2], None, "nothing finite observed for that feature");
        assert!(psi[0].is_some());
        assert_eq!(DriftReference::fit(&[]), None);
    }

    #[test]
    fn a_malformed_reference_is_named() {
        let mut reference = DriftReference::fit(&rows((0..100).map(|i| i as f32))).unwrap();
        reference.features[3].shares.pop();
        assert!(reference.check().unwrap_err().contains("two_tower_rank_weight"));
        reference.features.pop();
        assert!(reference.check().unwrap_err().contains("8 feature references"));
    }
}
