//! Table-driven tests of the verdicts.

use std::ops::Range;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Binomial, Distribution};

use super::*;
use crate::policy::OnTimeout;

/// Index of the recommended policy's 10% canary step: the canary owns user
/// groups 0–99, stable 100–999.
const CANARY_10: usize = 1;

fn policy() -> RolloutPolicy {
    let mut policy = RolloutPolicy::recommended();
    policy.analysis = AnalysisPolicy {
        ctr_margin: 0.05,
        confidence: 0.95,
        max_p99_latency: Some(Duration::from_millis(300)),
        max_error_rate: 0.01,
        on_timeout: OnTimeout::Rollback,
        pre_rollout_window: None,
    };
    policy
}

/// A side over `groups`, `per_group` impressions each, clicks binomial at
/// the CTR `ctr(group)`; a request per 10 impressions, all under 100 ms.
fn side_with(groups: Range<u16>, per_group: u64, ctr: impl Fn(u16) -> f64) -> SideMetrics {
    let mut rng = StdRng::seed_from_u64(u64::from(groups.start) * 7919 + per_group);
    let mut side = SideMetrics::default();
    for group in groups {
        let clicks = Binomial::new(per_group, ctr(group)).map_or(0, |b| b.sample(&mut rng));
        side.groups.insert(group, GroupCounts { impressions: per_group, clicks });
        side.impressions += per_group;
        side.clicks += clicks;
    }
    side.requests = side.impressions / 10;
    side.latency = vec![(0.1, side.requests), (0.3, side.requests), (1.0, side.requests)];
    side.latency_count = side.requests;
    side
}

fn stable(per_group: u64, ctr: f64) -> SideMetrics {
    side_with(100..1000, per_group, |_| ctr)
}

fn canary(per_group: u64, ctr: f64) -> SideMetrics {
    side_with(0..100, per_group, |_| ctr)
}

fn window(stable: SideMetrics, candidate: SideMetrics) -> WindowMetrics {
    WindowMetrics { stable, candidate, before: Groups::new() }
}

fn with_errors(mut side: SideMetrics, errors: u64) -> SideMetrics {
    side.errors = errors;
    side
}

/// `slow` of the side's requests took between 300 ms and 1 s.
fn with_slow(mut side: SideMetrics, slow: u64) -> SideMetrics {
    side.latency = vec![(0.1, side.requests - slow), (0.3, side.requests - slow), (1.0, side.requests)];
    side
}

fn analyse(window: &WindowMetrics) -> AnalysisReport {
    analyse_canary_steps(&policy(), CANARY_10, &[], window)
}

#[test]
fn canary_verdicts() {
    use AnalysisVerdict::{Fail, Inconclusive, Pass, SampleRatioMismatch};
    let cases = [
        ("no data", window(SideMetrics::default(), SideMetrics::default()), Inconclusive, "not enough users"),
        ("too few clicks", window(stable(10, 0.002), canary(10, 0.002)), Inconclusive, "not enough data"),
        ("equal but short", window(stable(20, 0.05), canary(20, 0.05)), Inconclusive, "undecided"),
        ("equal and long", window(stable(2_000, 0.05), canary(2_000, 0.05)), Pass, "within the 5.00% margin"),
        ("better and long", window(stable(2_000, 0.05), canary(2_000, 0.055)), Pass, "canary CTR"),
        ("20% drop", window(stable(500, 0.05), canary(500, 0.04)), Fail, "lower than stable's"),
        ("no canary clicks", window(stable(200, 0.05), canary(20, 0.0)), Fail, "canary CTR 0.00%"),
        (
            // Few canary impressions at the pooled CTR, but clicks enough to judge.
            "a canary far better than a low stable CTR",
            window(stable(100, 0.005), canary(10, 0.05)),
            Inconclusive,
            "undecided",
        ),
        (
            // Binomial variance would call this 10% drop certain; across
            // users (groups of 9% and 0%) it is noise.
            "a drop carried by a few users",
            window(stable(1_000, 0.05), side_with(0..100, 1_000, |g| if g % 2 == 0 { 0.09 } else { 0.0 })),
            Inconclusive,
            "variance across 900 + 100 user groups",
        ),
        (
            "errors far over stable's",
            window(with_errors(stable(200, 0.05), 10), with_errors(canary(200, 0.05), 100)),
            Fail,
            "error-rate guardrail: 100 errors in 2000 requests (5.00%) against stable's 0.06%",
        ),
        (
            "a shared outage",
            window(with_errors(stable(200, 0.05), 3_600), with_errors(canary(200, 0.05), 420)),
            Inconclusive,
            "undecided",
        ),
        ("slow canary", window(stable(200, 0.05), with_slow(canary(200, 0.05), 200)), Fail, "latency guardrail"),
        (
            "canary short of its share",
            window(stable(200, 0.05), side_with(0..50, 200, |_| 0.05)),
            SampleRatioMismatch,
            "sample ratio mismatch: the canary's users got 5.26% of impressions at weight 10%",
        ),
    ];
    for (name, window, verdict, fragment) in cases {
        let report = analyse(&window);
        assert_eq!(report.verdict, verdict, "{name}: {}", report.message);
        assert!(report.message.contains(fragment), "{name}: {:?} lacks {fragment:?}", report.message);
        assert_eq!(report.canary_impressions, window.candidate.impressions, "{name}");
        assert_eq!(report.stable_clicks, window.stable.clicks, "{name}");
    }
}

/// Both sides at 5%, groups alternately two binomial standard deviations
/// over and under it: no randomness, and a variance that shrinks as `1/n`.
fn steady(groups: Range<u16>, per_group: u64) -> SideMetrics {
    let spread = 2.0 * (0.05 * 0.95 * per_group as f64).sqrt();
    let mut side = side_with(groups.clone(), per_group, |_| 0.0);
    for (group, counts) in &mut side.groups {
        let sign = if group % 2 == 0 { 1.0 } else { -1.0 };
        counts.clicks = (0.05 * per_group as f64 + sign * spread).round() as u64;
    }
    side.clicks = side.groups.values().map(|g| g.clicks).sum();
    side
}

#[test]
fn an_undecided_report_estimates_the_impressions_still_needed() {
    let report = analyse(&window(steady(100..1000, 1_000), steady(0..100, 1_000)));
    assert_eq!(report.verdict, AnalysisVerdict::Inconclusive, "{}", report.message);
    let needed = report.impressions_to_decide.expect("an estimate");
    // With the data it said (and 10% more), the same CTRs decide.
    let per_group = 1_000 + (needed + needed / 10) / 100;
    let later = analyse(&window(steady(100..1000, per_group), steady(0..100, per_group)));
    assert_eq!(later.verdict, AnalysisVerdict::Pass, "needed {needed}: {}", later.message);
    assert_eq!(later.impressions_to_decide, None);
    // With half of it, not yet.
    let per_group = 1_000 + needed / 200;
    let sooner = analyse(&window(steady(100..1000, per_group), steady(0..100, per_group)));
    assert_eq!(sooner.verdict, AnalysisVerdict::Inconclusive, "needed {needed}: {}", sooner.message);
}

#[test]
fn cuped_shrinks_the_variance_with_what_users_did_before() {
    // Groups differ a lot in CTR, and keep their CTR from before the rollout.
    let ctr = |group: u16| 0.01 + 0.08 * f64::from(group % 10) / 10.0;
    let before: Groups = side_with(0..1000, 5_000, ctr).groups;
    let mut with_history = window(side_with(100..1000, 300, ctr), side_with(0..100, 300, ctr));
    let plain = analyse(&with_history);
    with_history.before = before;
    let adjusted = analyse(&with_history);
    let variance = |report: &AnalysisReport| report.estimate.map(|e| e.canary.variance).expect("an estimate");
    assert!(variance(&adjusted) < 0.5 * variance(&plain), "{adjusted:?} vs {plain:?}");
    assert!(adjusted.message.contains("less with CUPED"), "{}", adjusted.message);
}

#[test]
fn report_ctrs_are_finite() {
    let report = analyse(&window(SideMetrics::default(), SideMetrics::default()));
    assert_eq!((report.stable_ctr, report.canary_ctr), (0.0, 0.0));
    let report = analyse(&window(side_with(100..1000, 1, |_| 1.0), side_with(0..100, 2, |_| 1.0)));
    assert_eq!((report.stable_ctr, report.canary_ctr), (1.0, 1.0));
}

#[test]
fn earlier_steps_add_their_evidence() {
    let current = window(stable(200, 0.05), canary(200, 0.045));
    let first = analyse(&current);
    assert_eq!(first.verdict, AnalysisVerdict::Inconclusive, "{}", first.message);
    let earlier = [CtrCounts::of_report(&first); 4];
    let report = analyse_canary_steps(&policy(), CANARY_10, &earlier, &current);
    assert_eq!(report.verdict, AnalysisVerdict::Fail, "{}", report.message);
    // The report shows the current window's counts.
    assert_eq!(report.canary_impressions, 20_000);
    // A step recorded before user groups were measured adds nothing.
    let unmeasured = [CtrCounts { estimate: None, ..earlier[0] }; 4];
    let report = analyse_canary_steps(&policy(), CANARY_10, &unmeasured, &current);
    assert_eq!(report.verdict, AnalysisVerdict::Inconclusive, "{}", report.message);
}

#[test]
fn strata_do_not_mix_a_ctr_shift_into_the_difference() {
    // Equal CTRs in each step, but CTR doubles when the weight goes from 10%
    // to 50%: pooling the windows would show the canary far better.
    let step_10 = analyse(&window(stable(1_000, 0.02), canary(1_000, 0.02)));
    let half = |stable_ctr: f64, canary_ctr: f64| {
        window(side_with(500..1000, 1_000, |_| stable_ctr), side_with(0..500, 1_000, |_| canary_ctr))
    };
    let report = analyse_canary_steps(&policy(), 3, &[CtrCounts::of_report(&step_10)], &half(0.04, 0.04));
    assert!(report.message.contains("over 2 canary steps"), "{}", report.message);
    // Pooled, the canary would look 35% better; per step, it is within noise.
    let shown = report.message.split_once(" (").and_then(|(_, rest)| rest.split_once('%')).map(|(number, _)| number);
    let relative: f64 = shown.and_then(|number| number.parse().ok()).expect("a relative difference");
    assert!(relative.abs() < 3.0, "{}", report.message);
    let report = analyse_canary_steps(&policy(), 3, &[CtrCounts::of_report(&step_10)], &half(0.04, 0.036));
    assert_eq!(report.verdict, AnalysisVerdict::Fail, "{}", report.message);
}

#[test]
fn shadow_verdicts() {
    use AnalysisVerdict::{Fail, Inconclusive, Pass};
    let mirrored = |requests: u64, errors: u64, slow: u64| SideMetrics {
        requests,
        errors,
        latency: vec![(0.1, requests - slow), (0.3, requests - slow), (1.0, requests)],
        latency_count: requests,
        ..SideMetrics::default()
    };
    let served = mirrored(1_000, 2, 0);
    let cases = [
        ("healthy", mirrored(1_000, 2, 0), Pass, "guardrails hold on 1000 mirrored requests"),
        ("too few requests", mirrored(50, 0, 0), Inconclusive, "shadow got 50 mirrored requests"),
        ("errors", mirrored(1_000, 60, 0), Fail, "error-rate guardrail"),
        ("slow", mirrored(1_000, 0, 100), Fail, "latency guardrail: p99"),
        ("latency unknown", SideMetrics { requests: 1_000, ..SideMetrics::default() }, Pass, "p99 unknown"),
    ];
    for (name, shadow, verdict, fragment) in cases {
        let report = analyse_shadow(&policy(), &window(served.clone(), shadow));
        assert_eq!(report.verdict, verdict, "{name}: {}", report.message);
        assert!(report.message.contains(fragment), "{name}: {:?} lacks {fragment:?}", report.message);
    }
}

#[test]
fn without_a_latency_guardrail_latency_is_ignored() {
    let mut policy = policy();
    policy.analysis.max_p99_latency = None;
    let slow = window(stable(200, 0.05), with_slow(canary(200, 0.05), 2_000));
    assert_ne!(analyse_canary_steps(&policy, CANARY_10, &[], &slow).verdict, AnalysisVerdict::Fail);
}

#[test]
fn unavailable_metrics_are_inconclusive() {
    let report = metrics_unavailable("timeout");
    assert_eq!(report.verdict, AnalysisVerdict::Inconclusive);
    assert_eq!(report.message, "metrics unavailable: timeout");
}

#[test]
fn slow_requests_count_from_the_bucket_at_or_over_the_limit() {
    let side = SideMetrics {
        requests: 100,
        latency: vec![(0.1, 80), (0.25, 90), (0.5, 99)],
        latency_count: 100,
        ..SideMetrics::default()
    };
    assert_eq!(side.requests_slower_than(0.25), Some((10, 100)));
    assert_eq!(side.requests_slower_than(0.3), Some((1, 100)));
    assert_eq!(side.requests_slower_than(2.0), None);
    assert!(side.p99_latency_seconds().is_some_and(|p99| (0.25..=0.5).contains(&p99)));
}
