//! CTR and its variance measured across user groups, with CUPED.
//!
//! Impressions of one user are correlated (some users see and click far more
//! than others), so the binomial variance of a CTR, which treats impressions
//! as independent, is far too small on real traffic. User groups
//! ([`reco_contracts::routing::user_group`], 0.1% of users each) are
//! independent, so the CTR is a ratio estimator over clusters and its
//! variance comes from the delta method (the cluster-robust "sandwich"):
//! with `r_g = c_g − Ŷ n_g`, `Var(Ŷ) = G/(G−1) · Σ r_g² / (Σ n_g)²`.
//!
//! CUPED (Deng et al. 2013) subtracts what each side's groups did before the
//! rollout: `Ŷ_adj = Ŷ − θ (X̂ − X̄)` with `X̂` the same groups' CTR before the
//! rollout, `X̄` the pre-rollout CTR of both sides, and `θ = Cov(Ŷ, X̂) /
//! Var(X̂)` pooled over both sides. The pre-rollout CTR cannot depend on the
//! assignment, so the adjustment leaves the difference unbiased while it
//! removes the part of its noise that is "which users landed where".

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// User groups a side needs before its variance is trusted: fewer make the
/// variance itself too noisy for a normal approximation.
pub const MIN_GROUPS: usize = 20;

/// Impressions and clicks of one user group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCounts {
    pub impressions: u64,
    pub clicks: u64,
}

/// Counts per user group.
pub type Groups = BTreeMap<u16, GroupCounts>;

/// One side's CTR estimate over a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SideEstimate {
    /// CTR, adjusted by CUPED when pre-rollout counts were read.
    pub ctr: f64,
    /// Variance of `ctr` across user groups.
    pub variance: f64,
    /// User groups that had impressions.
    pub groups: u32,
}

/// Both sides' CTR estimates over one canary step's window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CtrEstimate {
    pub stable: SideEstimate,
    pub canary: SideEstimate,
    /// Share of the difference's variance that CUPED removed (0 without
    /// pre-rollout counts).
    pub variance_reduction: f64,
}

/// Sums over one side's groups.
#[derive(Clone, Copy, Debug, Default)]
struct Moments {
    impressions: f64,
    clicks: f64,
    before_impressions: f64,
    before_clicks: f64,
    groups: usize,
    /// Variance of the window's CTR, of the pre-rollout CTR, and their covariance.
    var_y: f64,
    var_x: f64,
    cov: f64,
}

impl Moments {
    fn of(groups: &Groups, before: &Groups) -> Self {
        let mut m = Moments::default();
        let paired = || {
            groups
                .iter()
                .filter(|(_, counts)| counts.impressions > 0)
                .map(|(group, counts)| (counts, before.get(group).copied().unwrap_or_default()))
        };
        for (counts, earlier) in paired() {
            m.impressions += counts.impressions as f64;
            m.clicks += counts.clicks as f64;
            m.before_impressions += earlier.impressions as f64;
            m.before_clicks += earlier.clicks as f64;
            m.groups += 1;
        }
        if m.groups < 2 {
            return m;
        }
        let y = m.clicks / m.impressions;
        let x = ratio(m.before_clicks, m.before_impressions);
        let (mut ss_y, mut ss_x, mut sp) = (0.0, 0.0, 0.0);
        for (counts, earlier) in paired() {
            let r = counts.clicks as f64 - y * counts.impressions as f64;
            let d = earlier.clicks as f64 - x * earlier.impressions as f64;
            ss_y += r * r;
            ss_x += d * d;
            sp += r * d;
        }
        let small_sample = m.groups as f64 / (m.groups as f64 - 1.0);
        m.var_y = small_sample * ss_y / (m.impressions * m.impressions);
        if m.before_impressions > 0.0 {
            m.var_x = small_sample * ss_x / (m.before_impressions * m.before_impressions);
            m.cov = small_sample * sp / (m.impressions * m.before_impressions);
        }
        m
    }

    fn ctr(&self) -> f64 {
        ratio(self.clicks, self.impressions)
    }

    fn before_ctr(&self) -> f64 {
        ratio(self.before_clicks, self.before_impressions)
    }
}

/// Why a window has no CTR estimate yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooFewGroups {
    pub stable: usize,
    pub canary: usize,
}

/// Both sides' estimates from their groups, CUPED-adjusted when `before`
/// holds pre-rollout counts of at least [`MIN_GROUPS`] groups on each side.
pub fn estimate(stable: &Groups, canary: &Groups, before: &Groups) -> Result<CtrEstimate, TooFewGroups> {
    let (s, c) = (Moments::of(stable, before), Moments::of(canary, before));
    if s.groups < MIN_GROUPS || c.groups < MIN_GROUPS {
        return Err(TooFewGroups { stable: s.groups, canary: c.groups });
    }
    let covered =
        |groups: &Groups| groups.keys().filter(|group| before.get(group).is_some_and(|b| b.impressions > 0)).count();
    let var_x = s.var_x + c.var_x;
    let theta = if covered(stable) >= MIN_GROUPS && covered(canary) >= MIN_GROUPS && var_x > 0.0 {
        (s.cov + c.cov) / var_x
    } else {
        0.0
    };
    let pooled_before = ratio(s.before_clicks + c.before_clicks, s.before_impressions + c.before_impressions);
    let side = |m: &Moments| SideEstimate {
        ctr: m.ctr() - theta * (m.before_ctr() - pooled_before),
        variance: (m.var_y - 2.0 * theta * m.cov + theta * theta * m.var_x).max(0.0),
        groups: u32::try_from(m.groups).unwrap_or(u32::MAX),
    };
    let (stable_estimate, canary_estimate) = (side(&s), side(&c));
    let raw = s.var_y + c.var_y;
    let adjusted = stable_estimate.variance + canary_estimate.variance;
    let variance_reduction = if raw > 0.0 { (1.0 - adjusted / raw).max(0.0) } else { 0.0 };
    Ok(CtrEstimate { stable: stable_estimate, canary: canary_estimate, variance_reduction })
}

fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 { numerator / denominator } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(counts: impl IntoIterator<Item = (u64, u64)>) -> Groups {
        counts
            .into_iter()
            .enumerate()
            .map(|(group, (impressions, clicks))| (group as u16, GroupCounts { impressions, clicks }))
            .collect()
    }

    #[test]
    fn too_few_groups_give_no_estimate() {
        let many = groups((0..30).map(|_| (100, 5)));
        let few = groups((0..5).map(|_| (100, 5)));
        assert_eq!(estimate(&many, &few, &Groups::new()), Err(TooFewGroups { stable: 30, canary: 5 }));
    }

    #[test]
    fn equal_groups_have_no_variance_and_uneven_ones_do() {
        let even = groups((0..40).map(|_| (100, 5)));
        let e = estimate(&even, &even, &Groups::new()).unwrap();
        assert!((e.canary.ctr - 0.05).abs() < 1e-12);
        assert_eq!(e.canary.variance, 0.0);
        // Half the groups click 10%, half 0%: CTR 5%, variance from the spread.
        let uneven = groups((0..40).map(|g| (100, if g % 2 == 0 { 10 } else { 0 })));
        let e = estimate(&even, &uneven, &Groups::new()).unwrap();
        assert!((e.canary.ctr - 0.05).abs() < 1e-12);
        // Σ r² = 40 · 5² = 1000, N = 4000: 40/39 · 1000 / 4000².
        let expected = 40.0 / 39.0 * 1000.0 / 16e6;
        assert!((e.canary.variance - expected).abs() < 1e-15, "{}", e.canary.variance);
        assert_eq!(e.variance_reduction, 0.0);
    }

    #[test]
    fn cuped_removes_what_the_groups_did_before() {
        // Each group keeps its own CTR before and during the rollout.
        // The canary's groups happen to click more (by one click in 100).
        let ctr = |g: u64| 2 + g % 7 + u64::from(g >= 50);
        let stable = groups((0..50).map(|g| (100, ctr(g))));
        let canary: Groups = (50..100).map(|g| (g as u16, GroupCounts { impressions: 100, clicks: ctr(g) })).collect();
        let before: Groups =
            (0..100).map(|g| (g as u16, GroupCounts { impressions: 1000, clicks: 10 * ctr(g) })).collect();
        let plain = estimate(&stable, &canary, &Groups::new()).unwrap();
        let adjusted = estimate(&stable, &canary, &before).unwrap();
        assert!(plain.canary.variance > 0.0);
        assert!(adjusted.canary.variance < 1e-3 * plain.canary.variance, "{adjusted:?}");
        assert!(adjusted.variance_reduction > 0.99, "{adjusted:?}");
        // Each group did exactly what it did before: CUPED sees no difference left.
        let difference = |e: &CtrEstimate| e.canary.ctr - e.stable.ctr;
        assert!(difference(&plain).abs() > 5e-3, "{plain:?}");
        assert!(difference(&adjusted).abs() < 1e-9, "{adjusted:?}");
    }
}
