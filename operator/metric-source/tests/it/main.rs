//! Integration tests of the metric sources against live HTTP: a fake
//! gateway exporting the real series names with `prometheus-client`, the
//! scrape source reading it, and a real Prometheus process scraping it for
//! the Prometheus source (`scripts/env.sh` installs one).

mod fake_gateway;
mod prometheus;
mod prometheus_server;
mod scrape;

use jiff::Timestamp;
use reco_metric_source::WindowQuery;

/// The namespace of every pipeline in these tests (the test Prometheus
/// labels its target with it, as Kubernetes discovery would).
const NAMESPACE: &str = "shop";

/// A canary (or, with `shadow`, a shadow) window of pipeline `pipeline`.
fn window(
    pipeline: &str,
    stable: &str,
    candidate: &str,
    shadow: bool,
    start: Timestamp,
    now: Timestamp,
) -> WindowQuery {
    WindowQuery {
        pipeline: pipeline.into(),
        namespace: NAMESPACE.into(),
        stable: stable.into(),
        candidate: candidate.into(),
        candidate_is_shadow: shadow,
        start,
        now,
        before: None,
    }
}

/// Asserts two latencies are equal up to float error.
#[track_caller]
fn assert_latency(actual: Option<f64>, expected: f64) {
    let actual = actual.expect("a p99 latency");
    assert!((actual - expected).abs() < 1e-9, "p99 {actual}, expected {expected}");
}
