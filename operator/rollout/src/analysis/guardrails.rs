//! Guardrails: the candidate's error rate and its share of slow requests,
//! each compared with stable's over the same window by a one-sided
//! sequential test, with Holm's correction across the guardrails.
//!
//! - Errors: rejects "`e_c − e_s ≤ max_error_rate`": the candidate fails
//!   requests at a rate shown to exceed stable's by more than the policy
//!   allows. A shared outage raises both sides and fails neither.
//! - Latency: rejects "`r_c − r_s ≤` [`SLOW_SHARE_TOLERANCE`]" where `r` is
//!   the share of requests slower than `max_p99_latency`: when stable keeps
//!   its p99 under the limit, the candidate's is shown to be over it. A slow
//!   cluster slows both and fails neither.
//!
//! Each rate's variance is binomial (requests fail or run long one by one;
//! a user's requests are not what a guardrail counts), with a half-count
//! added to each side so that a clean window still has a variance. The
//! family's budget is `α` per rollout, spent evenly over the policy's
//! steps; within a look Holm's step-down keeps the family-wise error of the
//! two guardrails at the step's share.

use super::sequential::{self, Estimate};
use super::{AnalysisPolicy, SideMetrics, percent, ratio, seconds};

/// Requests a window needs before its latency is judged: the tail of fewer
/// is mostly noise.
pub const MIN_GUARDRAIL_REQUESTS: u64 = 100;

/// How much larger a share of requests over `max_p99_latency` the candidate
/// may have than stable: one percentage point, the share a p99 leaves over.
pub const SLOW_SHARE_TOLERANCE: f64 = 0.01;

/// Smallest mixture scale of a guardrail test, in rate: an error-rate
/// tolerance of 0 is still tested against a 0.5-point excess.
const MIN_SCALE: f64 = 0.005;

/// One guardrail's test at one look.
struct Check {
    /// Always-valid p-value, `min(1, 1/Λ)`.
    p_value: f64,
    breach: String,
}

/// The guardrails the candidate breaks at level `alpha` (Holm over the
/// guardrails), described with their values; `None` when all hold.
pub(super) fn breach(
    policy: &AnalysisPolicy,
    stable: &SideMetrics,
    candidate: &SideMetrics,
    alpha: f64,
) -> Option<String> {
    let mut checks = vec![errors(policy, stable, candidate)];
    if let Some(limit) = policy.max_p99_latency {
        checks.extend(latency(limit.as_secs_f64(), stable, candidate));
    }
    checks.sort_by(|a, b| a.p_value.total_cmp(&b.p_value));
    let family = checks.len();
    let rejected: Vec<String> = checks
        .into_iter()
        .enumerate()
        .take_while(|(rank, check)| check.p_value <= alpha / (family - rank) as f64)
        .map(|(_, check)| check.breach)
        .collect();
    (!rejected.is_empty()).then(|| rejected.join("; "))
}

fn errors(policy: &AnalysisPolicy, stable: &SideMetrics, candidate: &SideMetrics) -> Check {
    let tolerance = policy.max_error_rate;
    let (rate_c, rate_s) = (ratio(candidate.errors, candidate.requests), ratio(stable.errors, stable.requests));
    let p_value = excess_p_value((candidate.errors, candidate.requests), (stable.errors, stable.requests), tolerance);
    let breach = format!(
        "error-rate guardrail: {} errors in {} requests ({}) against stable's {} exceed it by more than {}",
        candidate.errors,
        candidate.requests,
        percent(rate_c),
        percent(rate_s),
        percent(tolerance)
    );
    Check { p_value, breach }
}

fn latency(limit: f64, stable: &SideMetrics, candidate: &SideMetrics) -> Option<Check> {
    let (slow_c, timed_c) = candidate.requests_slower_than(limit)?;
    if timed_c < MIN_GUARDRAIL_REQUESTS {
        return None;
    }
    let (slow_s, timed_s) = stable.requests_slower_than(limit).unwrap_or((0, 0));
    let p_value = excess_p_value((slow_c, timed_c), (slow_s, timed_s), SLOW_SHARE_TOLERANCE);
    let p99 = candidate.p99_latency_seconds().map_or_else(|| "unknown".to_owned(), seconds);
    let breach = format!(
        "latency guardrail: p99 {p99}, {} of {timed_c} requests over {} against stable's {}",
        percent(ratio(slow_c, timed_c)),
        seconds(limit),
        percent(ratio(slow_s, timed_s)),
    );
    Some(Check { p_value, breach })
}

/// Always-valid p-value of "the candidate's rate exceeds stable's by more
/// than `tolerance`", from `(events, trials)` of each side.
fn excess_p_value(candidate: (u64, u64), stable: (u64, u64), tolerance: f64) -> f64 {
    if candidate.1 == 0 {
        return 1.0;
    }
    let smoothed_variance = |(events, trials): (u64, u64)| {
        if trials == 0 {
            return 0.0;
        }
        let rate = (events as f64 + 0.5) / (trials as f64 + 1.0);
        rate * (1.0 - rate) / trials as f64
    };
    let effect = ratio(candidate.0, candidate.1) - ratio(stable.0, stable.1) - tolerance;
    let estimate: Estimate = sequential::single(effect, smoothed_variance(candidate) + smoothed_variance(stable));
    let evidence = estimate.log_evidence(tolerance.max(MIN_SCALE)).exp();
    (1.0 / evidence).min(1.0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::policy::AnalysisPolicy;

    fn side(requests: u64, errors: u64, slow: u64) -> SideMetrics {
        SideMetrics {
            requests,
            errors,
            latency: vec![(0.1, requests - slow), (0.5, requests)],
            latency_count: requests,
            ..SideMetrics::default()
        }
    }

    #[test]
    fn guardrail_verdicts() {
        let policy =
            AnalysisPolicy { max_p99_latency: Some(Duration::from_millis(100)), ..AnalysisPolicy::recommended() };
        let cases = [
            ("clean", side(10_000, 10, 50), side(10_000, 10, 50), None),
            ("errors far over stable's", side(10_000, 10, 50), side(10_000, 400, 50), Some("error-rate guardrail")),
            ("a shared outage", side(10_000, 2_000, 50), side(10_000, 2_050, 50), None),
            ("errors within the tolerance", side(10_000, 10, 50), side(10_000, 60, 50), None),
            ("few requests, all failing", side(10_000, 0, 0), side(10, 10, 0), Some("10 errors in 10 requests")),
            ("slow", side(10_000, 0, 50), side(10_000, 0, 600), Some("latency guardrail")),
            ("both as slow", side(10_000, 0, 600), side(10_000, 0, 600), None),
            ("slow, but too few requests", side(10_000, 0, 0), side(50, 0, 40), None),
        ];
        for (name, stable, candidate, expected) in cases {
            let found = breach(&policy, &stable, &candidate, 0.05);
            match expected {
                None => assert_eq!(found, None, "{name}"),
                Some(fragment) => {
                    assert!(found.as_deref().is_some_and(|b| b.contains(fragment)), "{name}: {found:?}")
                }
            }
        }
    }

    #[test]
    fn holm_needs_stronger_evidence_for_the_first_of_two() {
        // Evidence between 1/α and 2/α on one guardrail: enough alone, not with two.
        let (candidate, stable) = ((130, 10_000), (100, 10_000));
        let p = excess_p_value(candidate, stable, 0.0);
        let alpha = p * 1.5;
        let policy = AnalysisPolicy { max_error_rate: 0.0, max_p99_latency: None, ..AnalysisPolicy::recommended() };
        let (stable, candidate) = (side(10_000, 100, 0), side(10_000, 130, 0));
        assert!(breach(&policy, &stable, &candidate, alpha).is_some());
        let policy = AnalysisPolicy { max_p99_latency: Some(Duration::from_millis(100)), ..policy };
        assert_eq!(breach(&policy, &stable, &candidate, alpha), None);
    }
}
