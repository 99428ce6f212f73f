//! CTR analysis of a canary against stable over the same window, with
//! latency and error-rate guardrails.
//!
//! # Guardrails
//!
//! Checked first, on the candidate side only (for a shadow, on its mirrored
//! requests). A guardrail break is a `Fail` at once:
//! - error rate: `errors > max_error_rate × max(requests, 100)`, i.e. the
//!   rate counts only from [`MIN_GUARDRAIL_REQUESTS`] requests on, but
//!   enough errors fail even a small sample;
//! - p99 latency above `max_p99_latency`, once the window holds at least
//!   [`MIN_GUARDRAIL_REQUESTS`] requests (a p99 of fewer is mostly noise).
//!
//! # CTR: two one-sided sequential tests
//!
//! With `p_c`, `p_s` the canary and stable click-through rates, `m` the
//! policy's `ctr_margin` and `α = 1 − confidence`:
//! - **Pass** (non-inferiority) rejects `p_c ≤ (1 − m) p_s`: the canary is
//!   shown to lose less than `m` of stable's CTR.
//! - **Fail** (inferiority) rejects `p_c ≥ p_s`: the canary is shown to be
//!   worse than stable. An A/A canary sits exactly on this null's boundary,
//!   so its false-rollback rate is at most `α`; a canary worse than stable
//!   but within the margin is promoted or rolled back, whichever evidence
//!   comes first (the smaller the loss, the likelier the promotion).
//!
//! Each test is a normal-mixture sequential probability ratio test (mSPRT;
//! Robbins 1970, Johari et al. 2017 "Peeking at A/B tests"): for the
//! estimated effect `θ̂` with variance `V`, its evidence is the likelihood
//! ratio of a half-normal mixture of alternatives (scale `τ`) against the
//! null boundary, `Λ = 2 √(1 − ρ) exp(ρ z² / 2) Φ(z √ρ)` with `z = θ̂/√V`,
//! `ρ = τ² / (V + τ²)`. The test decides when `Λ ≥ 1/α`. Under the null `Λ`
//! is a non-negative supermartingale, so (Ville's inequality) it ever
//! crosses `1/α` with probability at most `α`, *however often one looks*:
//! the controller may analyse the growing window at every reconcile.
//!
//! - Effects: Pass `θ̂ = p̂_c − (1 − m) p̂_s` with unpooled variance; Fail
//!   `θ̂ = p̂_s − p̂_c` with the variance pooled under `p_c = p_s` (which also
//!   copes with a canary that gets no clicks at all).
//! - Mixture scales, relative to the pooled CTR `p̄`: Pass `τ = m p̄` (the
//!   distance of an A/A canary from the Pass boundary), Fail
//!   `τ = `[`FAIL_SCALE_IN_MARGINS`]` × m p̄` (a drop of twice the margin,
//!   10% at the default 5% margin, is the one rollback is tuned for).
//! - Normal approximation: `Inconclusive` until stable has
//!   [`MIN_CLICKS`] clicks and the canary's impressions would earn as many
//!   at the pooled CTR.
//! - Strata: each canary step analyses its own window (constant weights), and
//!   the windows of the steps already passed ([`CtrCounts`], kept in the
//!   rollout state and passed on by `CandidateState::analyse`) are combined with it by inverse-variance weighting. The
//!   whole canary phase is thus one test that spends `α` once, and a CTR that
//!   drifts while the weight grows cannot masquerade as a difference
//!   (Simpson's paradox of pooling windows of unequal weights).
//!
//! Error rates (asymptotic: normal approximation, plug-in variances and
//! scales): a canary worse than the
//! margin is promoted with probability ≤ `α`; an A/A canary is rolled back
//! by the CTR test with probability ≤ `α`, over all looks of all canary
//! steps. `tests/simulation.rs` checks the A/A rate, and the power against
//! a 10% drop, under the recommended policy; `cargo run --release -p reco-rollout --example sample_size` measures
//! them, with the impressions the test needs against a fixed-sample test.

use std::iter;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::AnalysisPolicy;

mod histogram;
mod sequential;

pub use histogram::{p99_from_histogram, quantile_from_histogram};
use sequential::Estimate;

/// Below this many stable clicks (and expected canary clicks) the normal
/// approximation is not trusted: the verdict stays `Inconclusive`.
pub const MIN_CLICKS: u64 = 30;

/// Requests a window needs before its error rate and p99 are judged.
pub const MIN_GUARDRAIL_REQUESTS: u64 = 100;

/// The Fail test's mixture scale in margins: it is tuned to detect a drop of
/// this many margins fastest.
pub const FAIL_SCALE_IN_MARGINS: f64 = 2.0;

/// What one side (stable, canary or shadow) did during the analysis window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SideMetrics {
    pub impressions: u64,
    pub clicks: u64,
    /// Recommend requests served by this side (shadow: mirrored requests).
    pub requests: u64,
    pub errors: u64,
    /// p99 latency in seconds over the window, when there were requests.
    pub p99_latency_seconds: Option<f64>,
}

/// Metrics of stable and candidate over the same window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowMetrics {
    pub stable: SideMetrics,
    pub candidate: SideMetrics,
}

/// The verdict of one look at the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AnalysisVerdict {
    /// Enough evidence that the candidate is not worse than the margin.
    Pass,
    /// Enough evidence that the candidate is worse, or a guardrail broke.
    Fail,
    /// Not enough evidence yet, or metrics missing.
    Inconclusive,
}

/// One look at the metrics, as stored in status and shown to users.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisReport {
    pub stable_impressions: u64,
    pub stable_clicks: u64,
    pub stable_ctr: f64,
    pub canary_impressions: u64,
    pub canary_clicks: u64,
    pub canary_ctr: f64,
    pub verdict: AnalysisVerdict,
    /// Why: the statistic and threshold, the guardrail, or what was missing.
    pub message: String,
}

/// Impressions and clicks of both sides over one canary step's window: one
/// stratum of the sequential test.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CtrCounts {
    pub stable_impressions: u64,
    pub stable_clicks: u64,
    pub canary_impressions: u64,
    pub canary_clicks: u64,
}

impl CtrCounts {
    /// The counts of a window's stable and candidate sides.
    pub fn of_window(window: &WindowMetrics) -> Self {
        CtrCounts {
            stable_impressions: window.stable.impressions,
            stable_clicks: window.stable.clicks,
            canary_impressions: window.candidate.impressions,
            canary_clicks: window.candidate.clicks,
        }
    }

    /// The counts a report was computed from.
    pub fn of_report(report: &AnalysisReport) -> Self {
        CtrCounts {
            stable_impressions: report.stable_impressions,
            stable_clicks: report.stable_clicks,
            canary_impressions: report.canary_impressions,
            canary_clicks: report.canary_clicks,
        }
    }

    fn report(&self, verdict: AnalysisVerdict, message: String) -> AnalysisReport {
        AnalysisReport {
            stable_impressions: self.stable_impressions,
            stable_clicks: self.stable_clicks,
            stable_ctr: ratio(self.stable_clicks, self.stable_impressions),
            canary_impressions: self.canary_impressions,
            canary_clicks: self.canary_clicks,
            canary_ctr: ratio(self.canary_clicks, self.canary_impressions),
            verdict,
            message,
        }
    }
}

/// Judges a canary window. Repeated looks over a growing window keep their
/// stated error rates (sequential test).
pub fn analyse_canary(policy: &AnalysisPolicy, window: &WindowMetrics) -> AnalysisReport {
    analyse_canary_steps(policy, &[], window)
}

/// Judges the current canary step's window together with the windows of
/// the canary steps already passed (`CandidateState::completed_windows`),
/// as one sequential test. The report's counts are the current window's.
pub fn analyse_canary_steps(policy: &AnalysisPolicy, earlier: &[CtrCounts], window: &WindowMetrics) -> AnalysisReport {
    let current = CtrCounts::of_window(window);
    if let Some(breach) = guardrail_breach(policy, &window.candidate) {
        return current.report(AnalysisVerdict::Fail, breach);
    }
    let (verdict, message) = judge_ctr(policy, earlier, &current);
    current.report(verdict, message)
}

/// Judges a shadow window on guardrails only.
pub fn analyse_shadow(policy: &AnalysisPolicy, window: &WindowMetrics) -> AnalysisReport {
    let counts = CtrCounts::of_window(window);
    let shadow = &window.candidate;
    if let Some(breach) = guardrail_breach(policy, shadow) {
        return counts.report(AnalysisVerdict::Fail, breach);
    }
    if shadow.requests < MIN_GUARDRAIL_REQUESTS {
        let message =
            format!("shadow got {} mirrored requests, guardrails need {MIN_GUARDRAIL_REQUESTS}", shadow.requests);
        return counts.report(AnalysisVerdict::Inconclusive, message);
    }
    let latency = shadow.p99_latency_seconds.map_or_else(|| "unknown".to_owned(), seconds);
    let message = format!(
        "guardrails hold on {} mirrored requests: error rate {}, p99 {latency}",
        shadow.requests,
        percent(ratio(shadow.errors, shadow.requests))
    );
    counts.report(AnalysisVerdict::Pass, message)
}

/// A report for a window whose metrics could not be read.
pub fn metrics_unavailable(reason: &str) -> AnalysisReport {
    AnalysisReport {
        stable_impressions: 0,
        stable_clicks: 0,
        stable_ctr: 0.0,
        canary_impressions: 0,
        canary_clicks: 0,
        canary_ctr: 0.0,
        verdict: AnalysisVerdict::Inconclusive,
        message: format!("metrics unavailable: {reason}"),
    }
}

/// The first guardrail the candidate side breaks, described with its values.
fn guardrail_breach(policy: &AnalysisPolicy, side: &SideMetrics) -> Option<String> {
    let judged_requests = side.requests.max(MIN_GUARDRAIL_REQUESTS);
    if side.errors as f64 > policy.max_error_rate * judged_requests as f64 {
        return Some(format!(
            "error-rate guardrail: {} errors in {} requests ({}) exceed the maximum {}",
            side.errors,
            side.requests,
            percent(ratio(side.errors, side.requests)),
            percent(policy.max_error_rate)
        ));
    }
    let max_p99 = policy.max_p99_latency?.as_secs_f64();
    let p99 = side.p99_latency_seconds?;
    (side.requests >= MIN_GUARDRAIL_REQUESTS && p99 > max_p99).then(|| {
        format!(
            "latency guardrail: p99 {} over {} requests exceeds the maximum {}",
            seconds(p99),
            side.requests,
            seconds(max_p99)
        )
    })
}

/// The CTR verdict over the strata of the earlier canary steps and the current one.
fn judge_ctr(policy: &AnalysisPolicy, earlier: &[CtrCounts], current: &CtrCounts) -> (AnalysisVerdict, String) {
    let strata = || earlier.iter().chain(iter::once(current));
    let total = strata().fold(CtrCounts::default(), |sum, s| CtrCounts {
        stable_impressions: sum.stable_impressions + s.stable_impressions,
        stable_clicks: sum.stable_clicks + s.stable_clicks,
        canary_impressions: sum.canary_impressions + s.canary_impressions,
        canary_clicks: sum.canary_clicks + s.canary_clicks,
    });
    let pooled_ctr =
        ratio(total.stable_clicks + total.canary_clicks, total.stable_impressions + total.canary_impressions);
    let expected_canary_clicks = total.canary_impressions as f64 * pooled_ctr;
    if total.stable_clicks < MIN_CLICKS || expected_canary_clicks < MIN_CLICKS as f64 {
        let message = format!(
            "not enough data: {} stable clicks and {expected_canary_clicks:.0} expected canary clicks, need {MIN_CLICKS} each",
            total.stable_clicks
        );
        return (AnalysisVerdict::Inconclusive, message);
    }

    let margin = policy.ctr_margin;
    let mut non_inferiority = Estimate::default();
    let mut inferiority = Estimate::default();
    for s in strata() {
        if s.stable_impressions == 0 || s.canary_impressions == 0 {
            continue;
        }
        let (n_s, n_c) = (s.stable_impressions as f64, s.canary_impressions as f64);
        let (p_s, p_c) = (ratio(s.stable_clicks, s.stable_impressions), ratio(s.canary_clicks, s.canary_impressions));
        non_inferiority.add(
            p_c - (1.0 - margin) * p_s,
            p_c * (1.0 - p_c) / n_c + (1.0 - margin).powi(2) * p_s * (1.0 - p_s) / n_s,
        );
        let p = ratio(s.stable_clicks + s.canary_clicks, s.stable_impressions + s.canary_impressions);
        inferiority.add(p_s - p_c, p * (1.0 - p) * (1.0 / n_c + 1.0 / n_s));
    }

    let alpha = 1.0 - policy.confidence;
    let threshold = 1.0 / alpha;
    let fail_evidence = inferiority.log_evidence(FAIL_SCALE_IN_MARGINS * margin * pooled_ctr).exp();
    let pass_evidence = non_inferiority.log_evidence(margin * pooled_ctr).exp();
    let stable_ctr = ratio(total.stable_clicks, total.stable_impressions);
    let relative_difference = if stable_ctr > 0.0 { -inferiority.effect() / stable_ctr } else { 0.0 };
    // Pooled CTRs of several steps would mislead (Simpson): show this step's.
    let mut observed = format!(
        "canary CTR {} vs stable {}",
        percent(ratio(current.canary_clicks, current.canary_impressions)),
        percent(ratio(current.stable_clicks, current.stable_impressions)),
    );
    if !earlier.is_empty() {
        observed.push_str(" in this step");
    }
    // `+ 0.0` turns -0.0 into 0.0.
    observed.push_str(&format!(" ({:+.1}%", 100.0 * relative_difference + 0.0));
    if !earlier.is_empty() {
        observed.push_str(&format!(" over {} canary steps", earlier.len() + 1));
    }
    observed.push(')');
    let confidence = percent(policy.confidence);
    if fail_evidence >= threshold {
        let message = format!(
            "canary CTR is lower than stable's: {observed}; evidence {fail_evidence:.1} ≥ {threshold:.1} at {confidence} confidence"
        );
        (AnalysisVerdict::Fail, message)
    } else if pass_evidence >= threshold {
        let message = format!(
            "canary CTR is within the {} margin: {observed}; evidence {pass_evidence:.1} ≥ {threshold:.1} at {confidence} confidence",
            percent(margin)
        );
        (AnalysisVerdict::Pass, message)
    } else {
        let message = format!(
            "undecided: {observed}; evidence {pass_evidence:.1} for non-inferiority (margin {}), {fail_evidence:.1} for a drop, need {threshold:.1}",
            percent(margin)
        );
        (AnalysisVerdict::Inconclusive, message)
    }
}

/// `numerator / denominator`, 0 for an empty denominator.
fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 { 0.0 } else { numerator as f64 / denominator as f64 }
}

fn percent(fraction: f64) -> String {
    format!("{:.2}%", 100.0 * fraction)
}

fn seconds(value: f64) -> String {
    format!("{:.0} ms", 1000.0 * value)
}

#[cfg(test)]
mod tests;
