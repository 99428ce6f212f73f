//! Sample ratio mismatch: does the canary get the share of traffic its
//! weight promises?
//!
//! At weight `w` the canary owns `w × 10` of the 1,000 user groups and
//! stable the rest, and every group is 0.1% of users, so under a sound
//! split the mean impressions per group are equal on both sides. A group's
//! impressions are counted whichever version served them: while the new
//! routing reaches the gateways (a minute on a cluster) the canary's groups
//! are still served by stable, which is no mismatch. What shows is a side
//! whose users get fewer or more pages: a hash that does not split evenly,
//! clients that drop or retry the canary's pages, users who leave it. The test is a two-sided
//! sequential test on the difference of the means, with the variance taken
//! across groups (impressions per user vary a lot), at the strict
//! [`SRM_ALPHA`]: a mismatch pauses a rollout for a human to look.
//!
//! It counts impressions, so a candidate that changes how many pages its
//! users ask for shows as a mismatch too: a change a human should see
//! before promotion as well.

use reco_contracts::routing::{USER_GROUPS, groups_of_weight};

use super::sequential;
use super::{Groups, percent};

/// False alarm rate of the check per step: it pauses rollouts, so it is
/// held to the strict level usual for SRM checks.
pub const SRM_ALPHA: f64 = 0.001;

/// The mismatch it is tuned to detect fastest, relative to the mean.
const SCALE: f64 = 0.1;

/// Groups each side needs before the check runs.
const MIN_GROUPS: u64 = super::groups::MIN_GROUPS as u64;

/// A description of the mismatch when the canary's share is shown to differ
/// from `canary_weight`.
pub(super) fn mismatch(stable: &Groups, canary: &Groups, canary_weight: u8) -> Option<String> {
    let owned_canary = groups_of_weight(canary_weight);
    let owned_stable = USER_GROUPS - owned_canary;
    if owned_canary < MIN_GROUPS || owned_stable < MIN_GROUPS {
        return None;
    }
    // Each group's impressions, whichever version served them, on the side that owns it.
    let mut by_owner: [Groups; 2] = Default::default();
    for (group, counts) in stable.iter().chain(canary) {
        let owner = &mut by_owner[usize::from(u64::from(*group) < owned_canary)];
        owner.entry(*group).or_default().impressions += counts.impressions;
    }
    let [stable, canary] = &by_owner;
    let (mean_c, variance_c, total_c) = mean_and_variance(canary, owned_canary);
    let (mean_s, variance_s, total_s) = mean_and_variance(stable, owned_stable);
    let total = total_c + total_s;
    if total == 0.0 {
        return None;
    }
    let estimate =
        sequential::single(mean_c - mean_s, variance_c / owned_canary as f64 + variance_s / owned_stable as f64);
    let pooled_mean = total / USER_GROUPS as f64;
    let evidence = estimate.log_evidence_two_sided(SCALE * pooled_mean).exp();
    (evidence >= 1.0 / SRM_ALPHA).then(|| {
        format!(
            "sample ratio mismatch: the canary's users got {} of impressions at weight {canary_weight}% (evidence {evidence:.0} ≥ {:.0})",
            percent(total_c / total),
            1.0 / SRM_ALPHA
        )
    })
}

/// Mean and sample variance of impressions per group over the `owned`
/// groups of a side (a group without a series had none), and their total.
fn mean_and_variance(groups: &Groups, owned: u64) -> (f64, f64, f64) {
    let total: f64 = groups.values().map(|g| g.impressions as f64).sum();
    let mean = total / owned as f64;
    let reported = groups.len() as u64;
    let squares: f64 = groups.values().map(|g| (g.impressions as f64 - mean).powi(2)).sum::<f64>()
        + owned.saturating_sub(reported) as f64 * mean * mean;
    (mean, squares / (owned as f64 - 1.0), total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::GroupCounts;

    /// Groups `range` with `impressions` each, varied ±20% so that they have a spread.
    fn side(range: std::ops::Range<u16>, impressions: u64) -> Groups {
        range
            .map(|group| {
                let wobble = impressions / 5 * u64::from(group % 3) / 2;
                (group, GroupCounts { impressions: impressions - impressions / 10 + wobble, clicks: 0 })
            })
            .collect()
    }

    #[test]
    fn a_fair_split_passes_and_a_skewed_one_is_caught() {
        // Weight 50: groups 0–499 canary, 500–999 stable.
        let fair = mismatch(&side(500..1000, 1_000), &side(0..500, 1_000), 50);
        assert_eq!(fair, None);
        let skewed = mismatch(&side(500..1000, 1_100), &side(0..500, 900), 50);
        assert!(
            skewed.as_deref().is_some_and(|m| m.contains("users got 45.00% of impressions at weight 50%")),
            "{skewed:?}"
        );
    }

    #[test]
    fn stale_routing_is_no_mismatch() {
        // The new routing has not reached the gateways: stable still serves
        // half the canary's groups. Their users got their share of pages.
        let mut stable_served = side(100..1000, 1_000);
        stable_served.extend(side(0..50, 1_000));
        assert_eq!(mismatch(&stable_served, &side(50..100, 1_000), 10), None);
    }

    #[test]
    fn missing_groups_count_as_empty() {
        // The canary's series exist for half its groups only: it got half the traffic.
        let canary = side(0..50, 1_000);
        let found = mismatch(&side(100..1000, 1_000), &canary, 10);
        assert!(found.is_some(), "{found:?}");
    }

    #[test]
    fn too_few_groups_or_no_traffic_say_nothing() {
        assert_eq!(mismatch(&Groups::new(), &Groups::new(), 50), None);
        assert_eq!(mismatch(&side(10..1000, 1_000), &side(0..10, 10), 1), None);
    }
}
