//! How the served score of a candidate is formed, shared by the trainer
//! (which fits it) and the ranking service (which applies it): the ranker's
//! dense features from the candidate sources, their standardisation, and the
//! value model over the ranker's task probabilities.

use serde::{Deserialize, Serialize};

/// Number of dense ranker features (see [`dense_features`]).
pub const N_DENSE: usize = 9;

/// What the candidate sources say about one candidate item.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SourceEvidence {
    pub two_tower_score: f32,
    pub item_to_item_score: f32,
    /// Interactions with the item in the training data.
    pub train_count: u32,
    /// Rank in each source's list, `None` when the source did not return it.
    pub two_tower_rank: Option<usize>,
    pub item_to_item_rank: Option<usize>,
    pub popular_rank: Option<usize>,
}

/// `1 / log2(2 + rank)`, 0 when the source did not return the item.
pub fn rank_weight(rank: Option<usize>) -> f32 {
    rank.map_or(0.0, |r| 1.0 / ((r + 2) as f32).log2())
}

/// Standardised values (mean 0, unit variance; constant inputs map to 0).
pub fn zscore(v: &[f32]) -> Vec<f32> {
    let n = v.len().max(1) as f32;
    let mean = v.iter().sum::<f32>() / n;
    let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n).sqrt().max(1e-6);
    v.iter().map(|x| (x - mean) / std).collect()
}

/// The history length the ranker sees is capped here, at the features service's default
/// history bound (`reco_features::model::DEFAULT_HISTORY_LEN`): the service keeps a user's
/// latest 200 items, so a longer training history would be a value serving never produces
/// (the drift monitors caught it: PSI 0.98 on ordinary traffic before the cap).
pub const HISTORY_FEATURE_CAP: usize = 200;

/// Dense features of one user's candidates: two-tower and item-to-item
/// scores, log popularity, the three sources' rank weights, log history
/// length (capped at [`HISTORY_FEATURE_CAP`]), and the two scores
/// standardised within the user's candidates.
pub fn dense_features(candidates: &[SourceEvidence], history_len: usize) -> Vec<[f32; N_DENSE]> {
    let tt: Vec<f32> = candidates.iter().map(|c| c.two_tower_score).collect();
    let ii: Vec<f32> = candidates.iter().map(|c| c.item_to_item_score).collect();
    let (tz, iz) = (zscore(&tt), zscore(&ii));
    let hist_len = (history_len.min(HISTORY_FEATURE_CAP) as f32 + 1.0).ln();
    candidates
        .iter()
        .enumerate()
        .map(|(j, c)| {
            [
                c.two_tower_score,
                c.item_to_item_score,
                (c.train_count as f32 + 1.0).ln(),
                rank_weight(c.two_tower_rank),
                rank_weight(c.item_to_item_rank),
                rank_weight(c.popular_rank),
                hist_len,
                tz[j],
                iz[j],
            ]
        })
        .collect()
}

/// Mean and standard deviation of each dense feature, fitted on ranker training rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenseScaler {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl DenseScaler {
    pub fn fit<'a>(rows: impl IntoIterator<Item = &'a [f32; N_DENSE]>) -> Self {
        let mut mean = [0f64; N_DENSE];
        let mut sq = [0f64; N_DENSE];
        let mut n = 0f64;
        for row in rows {
            n += 1.0;
            for (j, &x) in row.iter().enumerate() {
                mean[j] += x as f64;
                sq[j] += (x as f64).powi(2);
            }
        }
        let n = n.max(1.0);
        let mean: Vec<f64> = mean.iter().map(|m| m / n).collect();
        let std = sq.iter().zip(&mean).map(|(s, m)| ((s / n - m * m).max(0.0).sqrt().max(1e-6)) as f32).collect();
        DenseScaler { mean: mean.into_iter().map(|m| m as f32).collect(), std }
    }

    /// Row-major `[rows.len() * N_DENSE]` of standardised features.
    pub fn apply<'a>(&self, rows: impl IntoIterator<Item = &'a [f32; N_DENSE]>) -> Vec<f32> {
        rows.into_iter().flat_map(|r| r.iter().enumerate().map(|(j, x)| (x - self.mean[j]) / self.std[j])).collect()
    }
}

/// How the served score is formed from the ranker's task probabilities and
/// the two-tower score, both chosen on validation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ValueModel {
    /// `w` in `value = p(interaction) * (1 + w * p(high rating))`.
    pub high_rating_weight: f64,
    /// Served score = `blend * z(ln value) + (1 - blend) * z(two-tower score)`,
    /// z-scores taken over the user's candidates; 1 is the ranker alone.
    pub ranker_blend: f64,
}

impl ValueModel {
    /// Served scores of one user's candidates from their values and two-tower scores.
    pub fn served_scores(&self, values: &[f32], two_tower: &[f32]) -> Vec<f32> {
        let lv: Vec<f32> = values.iter().map(|x| x.max(1e-12).ln()).collect();
        let (zr, zt) = (zscore(&lv), zscore(two_tower));
        let blend = self.ranker_blend as f32;
        zr.iter().zip(&zt).map(|(r, t)| blend * r + (1.0 - blend) * t).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_length_feature_stops_where_serving_histories_stop() {
        let one = [SourceEvidence::default()];
        let at = |len| dense_features(&one, len)[0][6];
        assert_eq!(at(HISTORY_FEATURE_CAP + 500), at(HISTORY_FEATURE_CAP));
        assert!(at(HISTORY_FEATURE_CAP - 1) < at(HISTORY_FEATURE_CAP));
    }

    #[test]
    fn zscore_and_rank_weight() {
        let z = zscore(&[1.0, 2.0, 3.0]);
        assert!((z.iter().sum::<f32>()).abs() < 1e-5);
        assert!(z[2] > z[1] && z[1] > z[0]);
        assert_eq!(zscore(&[5.0, 5.0]), vec![0.0, 0.0]);
        assert_eq!(rank_weight(None), 0.0);
        assert_eq!(rank_weight(Some(0)), 1.0);
        assert!(rank_weight(Some(1)) < 1.0);
    }

    #[test]
    fn dense_features_follow_the_sources() {
        let c = [
            SourceEvidence { two_tower_score: 0.9, train_count: 10, two_tower_rank: Some(0), ..Default::default() },
            SourceEvidence { item_to_item_score: 0.5, item_to_item_rank: Some(3), ..Default::default() },
        ];
        let d = dense_features(&c, 7);
        assert_eq!(d[0][0], 0.9);
        assert_eq!(d[0][3], 1.0);
        assert_eq!(d[1][3], 0.0);
        assert!((d[0][2] - 11f32.ln()).abs() < 1e-6);
        assert!((d[1][6] - 8f32.ln()).abs() < 1e-6);
        assert!(d[0][7] > d[1][7] && d[1][8] > d[0][8]);
    }

    #[test]
    fn scaler_standardises_and_value_model_blends() {
        let rows = [[1.0; N_DENSE], [3.0; N_DENSE]];
        let s = DenseScaler::fit(&rows);
        assert_eq!(s.apply(&rows)[..2], [-1.0, -1.0]);
        let ranker_only = ValueModel { high_rating_weight: 0.0, ranker_blend: 1.0 };
        let two_tower_only = ValueModel { high_rating_weight: 0.0, ranker_blend: 0.0 };
        let (values, tt) = ([0.9, 0.1], [0.1, 0.9]);
        let a = ranker_only.served_scores(&values, &tt);
        let b = two_tower_only.served_scores(&values, &tt);
        assert!(a[0] > a[1] && b[1] > b[0]);
    }
}
