//! Table-driven tests of the verdicts.

use std::time::Duration;

use super::*;
use crate::policy::OnTimeout;

fn policy() -> AnalysisPolicy {
    AnalysisPolicy {
        ctr_margin: 0.05,
        confidence: 0.95,
        max_p99_latency: Some(Duration::from_millis(300)),
        max_error_rate: 0.01,
        on_timeout: OnTimeout::Rollback,
    }
}

fn side(impressions: u64, clicks: u64) -> SideMetrics {
    SideMetrics { impressions, clicks, requests: impressions / 10, errors: 0, p99_latency_seconds: Some(0.1) }
}

fn window(stable: SideMetrics, candidate: SideMetrics) -> WindowMetrics {
    WindowMetrics { stable, candidate }
}

fn with_errors(mut side: SideMetrics, requests: u64, errors: u64) -> SideMetrics {
    side.requests = requests;
    side.errors = errors;
    side
}

fn with_p99(mut side: SideMetrics, p99: Option<f64>) -> SideMetrics {
    side.p99_latency_seconds = p99;
    side
}

#[test]
fn canary_verdicts() {
    use AnalysisVerdict::{Fail, Inconclusive, Pass};
    let cases = [
        ("no data", window(side(0, 0), side(0, 0)), Inconclusive, "not enough data"),
        ("too few stable clicks", window(side(500, 25), side(500, 25)), Inconclusive, "25 stable clicks"),
        ("too few canary impressions", window(side(100_000, 5_000), side(500, 25)), Inconclusive, "need 30 each"),
        ("equal but short", window(side(20_000, 1_000), side(2_000, 100)), Inconclusive, "undecided"),
        ("equal and long", window(side(2_000_000, 100_000), side(400_000, 20_000)), Pass, "within the 5.00% margin"),
        ("better and long", window(side(2_000_000, 100_000), side(400_000, 22_000)), Pass, "(+10.0%)"),
        ("20% drop", window(side(400_000, 20_000), side(40_000, 1_600)), Fail, "lower than stable's"),
        ("no canary clicks", window(side(100_000, 5_000), side(2_000, 0)), Fail, "canary CTR 0.00%"),
        (
            "3% drop, long: worse, though within margin",
            window(side(4_000_000, 200_000), side(2_000_000, 97_000)),
            Fail,
            "(-3.0%)",
        ),
        (
            "error-rate guardrail",
            window(side(100_000, 5_000), with_errors(side(100_000, 5_000), 1_000, 11)),
            Fail,
            "error-rate guardrail: 11 errors in 1000 requests (1.10%) exceed the maximum 1.00%",
        ),
        (
            "errors within the limit",
            window(side(20_000, 1_000), with_errors(side(2_000, 100), 1_000, 10)),
            Inconclusive,
            "undecided",
        ),
        (
            "few requests, few errors",
            window(side(0, 0), with_errors(side(0, 0), 10, 1)),
            Inconclusive,
            "not enough data",
        ),
        (
            "few requests, all failing",
            window(side(0, 0), with_errors(side(0, 0), 10, 10)),
            Fail,
            "10 errors in 10 requests (100.00%)",
        ),
        (
            "latency guardrail",
            window(side(100_000, 5_000), with_p99(side(100_000, 5_000), Some(0.45))),
            Fail,
            "latency guardrail: p99 450 ms over 10000 requests exceeds the maximum 300 ms",
        ),
        (
            "latency of too few requests",
            window(side(100, 5), with_p99(side(100, 5), Some(0.45))),
            Inconclusive,
            "not enough data",
        ),
        ("unknown latency", window(side(100, 5), with_p99(side(100, 5), None)), Inconclusive, "not enough data"),
    ];
    for (name, window, verdict, fragment) in cases {
        let report = analyse_canary(&policy(), &window);
        assert_eq!(report.verdict, verdict, "{name}: {}", report.message);
        assert!(report.message.contains(fragment), "{name}: {:?} lacks {fragment:?}", report.message);
        assert_eq!(report.canary_impressions, window.candidate.impressions, "{name}");
        assert_eq!(report.stable_clicks, window.stable.clicks, "{name}");
    }
}

#[test]
fn report_ctrs_are_finite() {
    let report = analyse_canary(&policy(), &window(side(0, 0), side(0, 0)));
    assert_eq!((report.stable_ctr, report.canary_ctr), (0.0, 0.0));
    let report = analyse_canary(&policy(), &window(side(1_000, 50), side(200, 20)));
    assert_eq!((report.stable_ctr, report.canary_ctr), (0.05, 0.1));
}

#[test]
fn earlier_steps_add_their_evidence() {
    let current = window(side(20_000, 1_000), side(20_000, 900));
    assert_eq!(analyse_canary(&policy(), &current).verdict, AnalysisVerdict::Inconclusive);
    let earlier = [CtrCounts::of_window(&current); 3];
    let report = analyse_canary_steps(&policy(), &earlier, &current);
    assert_eq!(report.verdict, AnalysisVerdict::Fail, "{}", report.message);
    // The report shows the current window's counts.
    assert_eq!(report.canary_impressions, 20_000);
}

#[test]
fn strata_do_not_mix_a_ctr_shift_into_the_difference() {
    // Equal CTRs in each step, but CTR doubles when the weight goes from 5%
    // to 50%: pooling the windows would show the canary 40% better.
    let earlier = [CtrCounts {
        stable_impressions: 950_000,
        stable_clicks: 19_000,
        canary_impressions: 50_000,
        canary_clicks: 1_000,
    }];
    let current = window(side(500_000, 20_000), side(500_000, 20_000));
    let report = analyse_canary_steps(&policy(), &earlier, &current);
    assert!(report.message.contains("(+0.0% over 2 canary steps)"), "{}", report.message);
    let worse = window(side(500_000, 20_000), side(500_000, 19_000));
    let earlier_worse = [CtrCounts { canary_clicks: 950, ..earlier[0] }];
    let report = analyse_canary_steps(&policy(), &earlier_worse, &worse);
    assert_eq!(report.verdict, AnalysisVerdict::Fail, "{}", report.message);
}

#[test]
fn shadow_verdicts() {
    use AnalysisVerdict::{Fail, Inconclusive, Pass};
    let mirrored = |requests: u64, errors: u64, p99: Option<f64>| SideMetrics {
        requests,
        errors,
        p99_latency_seconds: p99,
        ..SideMetrics::default()
    };
    let cases = [
        ("healthy", mirrored(1_000, 2, Some(0.1)), Pass, "guardrails hold on 1000 mirrored requests"),
        ("too few requests", mirrored(50, 0, Some(0.1)), Inconclusive, "shadow got 50 mirrored requests"),
        ("errors", mirrored(1_000, 20, Some(0.1)), Fail, "error-rate guardrail"),
        ("slow", mirrored(1_000, 0, Some(0.5)), Fail, "latency guardrail: p99 500 ms"),
        ("latency unknown", mirrored(1_000, 0, None), Pass, "p99 unknown"),
    ];
    for (name, shadow, verdict, fragment) in cases {
        let report = analyse_shadow(&policy(), &window(side(10_000, 500), shadow));
        assert_eq!(report.verdict, verdict, "{name}: {}", report.message);
        assert!(report.message.contains(fragment), "{name}: {:?} lacks {fragment:?}", report.message);
    }
}

#[test]
fn without_a_latency_guardrail_latency_is_ignored() {
    let policy = AnalysisPolicy { max_p99_latency: None, ..policy() };
    let slow = window(side(100, 5), with_p99(side(100_000, 5_000), Some(10.0)));
    assert_ne!(analyse_canary(&policy, &slow).verdict, AnalysisVerdict::Fail);
}

#[test]
fn unavailable_metrics_are_inconclusive() {
    let report = metrics_unavailable("timeout");
    assert_eq!(report.verdict, AnalysisVerdict::Inconclusive);
    assert_eq!(report.message, "metrics unavailable: timeout");
}
