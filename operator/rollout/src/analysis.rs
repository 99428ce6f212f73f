//! CTR analysis of a canary against stable over the same window: guardrails,
//! the sample ratio, then two sequential CTR tests.
//!
//! # Guardrails ([`guardrails`])
//!
//! The candidate's error rate and its share of requests over
//! `max_p99_latency`, each compared with stable's over the same window by a
//! one-sided sequential test (for a shadow: its mirrored requests against
//! what stable served). Holm's step-down controls the two; their budget is
//! `α` per rollout, spent evenly over its steps. A breach is a `Fail`.
//!
//! # Sample ratio ([`srm`])
//!
//! The canary's share of impressions must match its weight; a mismatch
//! (two-sided sequential test at [`SRM_ALPHA`]) is a `SampleRatioMismatch`:
//! the engine holds the step and never promotes on it.
//!
//! # CTR: two one-sided sequential tests
//!
//! Each side's CTR and its variance come from user groups ([`groups`]):
//! users, not impressions, are independent, and a few heavy users make the
//! binomial variance far too small. With pre-rollout counts per group, CUPED
//! removes the part of the noise that is which users landed on which side.
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
//! - Effects: Pass `θ̂ = p̂_c − (1 − m) p̂_s`, Fail `θ̂ = p̂_s − p̂_c`, each
//!   with the sides' variances across user groups.
//! - Mixture scales, relative to the pooled CTR `p̄`: Pass `τ = m p̄` (the
//!   distance of an A/A canary from the Pass boundary), Fail
//!   `τ = `[`FAIL_SCALE_IN_MARGINS`]` × m p̄` (a drop of twice the margin,
//!   10% at the default 5% margin, is the one rollback is tuned for).
//! - Normal approximation: `Inconclusive` until stable has [`MIN_CLICKS`]
//!   clicks, the canary has as many or its impressions would earn them at
//!   the pooled CTR, and each side has [`MIN_GROUPS`] user groups with
//!   impressions.
//! - Strata: each canary step analyses its own window (constant weights), and
//!   the estimates of the steps already passed ([`CtrCounts`], kept in the
//!   rollout state and passed on by `CandidateState::analyse`) are combined
//!   with it by inverse-variance weighting. The whole canary phase is thus
//!   one test that spends `α` once, and a CTR that drifts while the weight
//!   grows cannot masquerade as a difference (Simpson's paradox).
//! - While undecided, the report estimates the canary impressions still
//!   needed if the effect seen so far holds ([`AnalysisReport::impressions_to_decide`]).
//!
//! Error rates (asymptotic: normal approximation, plug-in variances and
//! scales): a canary worse than the margin is promoted with probability
//! ≤ `α`; an A/A canary is rolled back by the CTR test with probability
//! ≤ `α`, over all looks of all canary steps. `tests/simulation.rs` checks
//! both on users who differ in how much they see and click;
//! `cargo run --release -p reco-rollout --example sample_size` measures them
//! against the independent-impression test, with the impressions to a
//! decision with and without CUPED against a fixed-sample test.

use std::iter;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::{AnalysisPolicy, RolloutPolicy, Step};

mod groups;
mod guardrails;
mod histogram;
mod sequential;
mod srm;

pub use groups::{CtrEstimate, GroupCounts, Groups, MIN_GROUPS, SideEstimate};
pub use guardrails::{MIN_GUARDRAIL_REQUESTS, SLOW_SHARE_TOLERANCE};
pub use histogram::{p99_from_histogram, quantile_from_histogram};
use sequential::Estimate;
pub use srm::SRM_ALPHA;

/// Below this many stable clicks (and canary clicks, had or expected at the
/// pooled CTR) the normal
/// approximation is not trusted: the verdict stays `Inconclusive`.
pub const MIN_CLICKS: u64 = 30;

/// The Fail test's mixture scale in margins: it is tuned to detect a drop of
/// this many margins fastest.
pub const FAIL_SCALE_IN_MARGINS: f64 = 2.0;

/// How much more data [`AnalysisReport::impressions_to_decide`] looks
/// ahead, in multiples of what the test has: beyond, it says nothing.
const LOOKAHEAD: f64 = 1_000.0;

/// What one side (stable, canary or shadow) did during the analysis window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SideMetrics {
    pub impressions: u64,
    pub clicks: u64,
    /// Recommend requests served by this side (shadow: mirrored requests).
    pub requests: u64,
    pub errors: u64,
    /// Latency histogram over the window: `(upper bound in seconds, requests
    /// at or under it)` for the finite bounds, ascending.
    #[serde(default)]
    pub latency: Vec<(f64, u64)>,
    /// Observations in that histogram (its `+Inf` bucket). Not always
    /// `requests`: a mirrored request dropped before it ran is counted, not timed.
    #[serde(default)]
    pub latency_count: u64,
    /// Impressions and clicks per user group: the CTR's variance comes from
    /// their spread.
    #[serde(default)]
    pub groups: Groups,
}

impl SideMetrics {
    /// p99 latency over the window, `histogram_quantile` style; `None`
    /// without requests or buckets.
    pub fn p99_latency_seconds(&self) -> Option<f64> {
        let mut buckets = self.latency.clone();
        buckets.push((f64::INFINITY, self.latency_count));
        p99_from_histogram(&buckets)
    }

    /// `(slower, timed)`: requests slower than `limit` seconds, counted from
    /// the smallest bucket bound at or over it (so those between the limit
    /// and that bound count as fast), out of the requests timed; `None` when
    /// no bound is that high.
    pub fn requests_slower_than(&self, limit: f64) -> Option<(u64, u64)> {
        let (_, within) = self.latency.iter().find(|(bound, _)| *bound >= limit)?;
        Some((self.latency_count.saturating_sub(*within), self.latency_count))
    }
}

/// Metrics of stable and candidate over the same window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowMetrics {
    pub stable: SideMetrics,
    pub candidate: SideMetrics,
    /// Impressions and clicks per user group, of every version, before the
    /// candidate served anyone: CUPED's covariate. Empty when not read.
    #[serde(default)]
    pub before: Groups,
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
    /// The canary does not get the share of traffic its weight promises:
    /// its numbers cannot be trusted, so the rollout holds for a human.
    SampleRatioMismatch,
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
    /// This step's CTR estimates with their variance across user groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<CtrEstimate>,
    /// While undecided: about how many more canary impressions the test
    /// needs to decide, if the effect seen so far holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impressions_to_decide: Option<u64>,
}

/// Impressions, clicks and CTR estimates of both sides over one canary
/// step's window: one stratum of the sequential test.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CtrCounts {
    pub stable_impressions: u64,
    pub stable_clicks: u64,
    pub canary_impressions: u64,
    pub canary_clicks: u64,
    /// `None` for a step judged before user groups were measured: it then
    /// adds no evidence (its variance is unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<CtrEstimate>,
}

impl CtrCounts {
    /// The counts of a window's stable and candidate sides.
    pub fn of_window(window: &WindowMetrics) -> Self {
        CtrCounts {
            stable_impressions: window.stable.impressions,
            stable_clicks: window.stable.clicks,
            canary_impressions: window.candidate.impressions,
            canary_clicks: window.candidate.clicks,
            estimate: None,
        }
    }

    /// The counts and estimate a report was computed from.
    pub fn of_report(report: &AnalysisReport) -> Self {
        CtrCounts {
            stable_impressions: report.stable_impressions,
            stable_clicks: report.stable_clicks,
            canary_impressions: report.canary_impressions,
            canary_clicks: report.canary_clicks,
            estimate: report.estimate,
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
            estimate: self.estimate,
            impressions_to_decide: None,
        }
    }
}

/// Judges the window of canary step `step` (an index into the policy's
/// steps) together with the windows of the canary steps already passed
/// (`CandidateState::completed_windows`), as one sequential test:
/// guardrails first, then the sample ratio, then CTR. The report's counts
/// are the current window's.
pub fn analyse_canary_steps(
    policy: &RolloutPolicy,
    step: usize,
    earlier: &[CtrCounts],
    window: &WindowMetrics,
) -> AnalysisReport {
    let mut current = CtrCounts::of_window(window);
    let analysis = &policy.analysis;
    if let Some(breach) = guardrails::breach(analysis, &window.stable, &window.candidate, guardrail_alpha(policy)) {
        return current.report(AnalysisVerdict::Fail, breach);
    }
    let weight = match policy.steps.get(step) {
        Some(Step::Canary { weight, .. }) => *weight,
        _ => 100,
    };
    if let Some(mismatch) = srm::mismatch(&window.stable.groups, &window.candidate.groups, weight) {
        return current.report(AnalysisVerdict::SampleRatioMismatch, mismatch);
    }
    match groups::estimate(&window.stable.groups, &window.candidate.groups, &window.before) {
        Ok(estimate) => current.estimate = Some(estimate),
        Err(few) => {
            let message = format!(
                "not enough users: the CTR's variance needs {MIN_GROUPS} user groups with impressions on each side, stable has {}, canary {}",
                few.stable, few.canary
            );
            return current.report(AnalysisVerdict::Inconclusive, message);
        }
    }
    let judged = judge_ctr(analysis, earlier, &current);
    let mut report = current.report(judged.verdict, judged.message);
    report.impressions_to_decide = judged.impressions_to_decide;
    report
}

/// Judges a shadow window on guardrails only, its mirrored requests against
/// what stable served over the same window.
pub fn analyse_shadow(policy: &RolloutPolicy, window: &WindowMetrics) -> AnalysisReport {
    let counts = CtrCounts::of_window(window);
    let shadow = &window.candidate;
    if let Some(breach) = guardrails::breach(&policy.analysis, &window.stable, shadow, guardrail_alpha(policy)) {
        return counts.report(AnalysisVerdict::Fail, breach);
    }
    if shadow.requests < MIN_GUARDRAIL_REQUESTS {
        let message =
            format!("shadow got {} mirrored requests, guardrails need {MIN_GUARDRAIL_REQUESTS}", shadow.requests);
        return counts.report(AnalysisVerdict::Inconclusive, message);
    }
    let latency = shadow.p99_latency_seconds().map_or_else(|| "unknown".to_owned(), seconds);
    let message = format!(
        "guardrails hold on {} mirrored requests: error rate {} (stable {}), p99 {latency}",
        shadow.requests,
        percent(ratio(shadow.errors, shadow.requests)),
        percent(ratio(window.stable.errors, window.stable.requests)),
    );
    counts.report(AnalysisVerdict::Pass, message)
}

/// A report for a window whose metrics could not be read.
pub fn metrics_unavailable(reason: &str) -> AnalysisReport {
    CtrCounts::default().report(AnalysisVerdict::Inconclusive, format!("metrics unavailable: {reason}"))
}

/// The guardrails' error budget at one step: `α` per rollout, spent evenly
/// over the policy's steps (Bonferroni), so that an A/A rollout breaks a
/// guardrail with probability at most `α` over all its steps.
fn guardrail_alpha(policy: &RolloutPolicy) -> f64 {
    (1.0 - policy.analysis.confidence) / policy.steps.len().max(1) as f64
}

/// A CTR verdict with the data it still needs.
struct CtrJudgement {
    verdict: AnalysisVerdict,
    message: String,
    impressions_to_decide: Option<u64>,
}

/// The CTR verdict over the strata of the earlier canary steps and the current one.
fn judge_ctr(policy: &AnalysisPolicy, earlier: &[CtrCounts], current: &CtrCounts) -> CtrJudgement {
    let strata = || earlier.iter().chain(iter::once(current));
    let total = strata().fold(CtrCounts::default(), |sum, s| CtrCounts {
        stable_impressions: sum.stable_impressions + s.stable_impressions,
        stable_clicks: sum.stable_clicks + s.stable_clicks,
        canary_impressions: sum.canary_impressions + s.canary_impressions,
        canary_clicks: sum.canary_clicks + s.canary_clicks,
        estimate: None,
    });
    let pooled_ctr =
        ratio(total.stable_clicks + total.canary_clicks, total.stable_impressions + total.canary_impressions);
    // The canary's side is approximately normal once it has the clicks, or
    // would have them at the pooled CTR (so a canary that gets none can fail).
    let canary_clicks = (total.canary_impressions as f64 * pooled_ctr).max(total.canary_clicks as f64);
    if total.stable_clicks < MIN_CLICKS || canary_clicks < MIN_CLICKS as f64 {
        let message = format!(
            "not enough data: {} stable clicks and {canary_clicks:.0} canary clicks (had or expected), need {MIN_CLICKS} each",
            total.stable_clicks
        );
        return CtrJudgement { verdict: AnalysisVerdict::Inconclusive, message, impressions_to_decide: None };
    }

    let margin = policy.ctr_margin;
    let mut non_inferiority = Estimate::default();
    let mut inferiority = Estimate::default();
    for estimate in strata().filter_map(|s| s.estimate) {
        let (stable, canary) = (estimate.stable, estimate.canary);
        non_inferiority
            .add(canary.ctr - (1.0 - margin) * stable.ctr, canary.variance + (1.0 - margin).powi(2) * stable.variance);
        inferiority.add(stable.ctr - canary.ctr, canary.variance + stable.variance);
    }

    let alpha = 1.0 - policy.confidence;
    let threshold = 1.0 / alpha;
    let (fail_scale, pass_scale) = (FAIL_SCALE_IN_MARGINS * margin * pooled_ctr, margin * pooled_ctr);
    let fail_evidence = inferiority.log_evidence(fail_scale).exp();
    let pass_evidence = non_inferiority.log_evidence(pass_scale).exp();
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
    if let Some(estimate) = current.estimate {
        observed.push_str(&format!(
            "; variance across {} + {} user groups",
            estimate.stable.groups, estimate.canary.groups
        ));
        if estimate.variance_reduction > 0.0 {
            observed.push_str(&format!(", {:.0}% less with CUPED", 100.0 * estimate.variance_reduction));
        }
    }
    observed.push(')');
    let confidence = percent(policy.confidence);
    let (verdict, message) = if fail_evidence >= threshold {
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
    };
    let impressions_to_decide = (verdict == AnalysisVerdict::Inconclusive)
        .then(|| {
            let decides = |factor: f64| {
                non_inferiority.scaled(factor).log_evidence(pass_scale) >= threshold.ln()
                    || inferiority.scaled(factor).log_evidence(fail_scale) >= threshold.ln()
            };
            information_factor_to_decide(decides)
        })
        .flatten()
        .map(|factor| ((factor - 1.0) * total.canary_impressions as f64).ceil() as u64);
    CtrJudgement { verdict, message, impressions_to_decide }
}

/// The smallest factor (on a 5% grid, up to [`LOOKAHEAD`]) by which the
/// test's information must grow for `decides` to hold.
fn information_factor_to_decide(decides: impl Fn(f64) -> bool) -> Option<f64> {
    iter::successors(Some(1.0_f64), |factor| Some(factor * 1.05))
        .take_while(|factor| *factor <= LOOKAHEAD)
        .find(|factor| decides(*factor))
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
