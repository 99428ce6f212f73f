//! The Prometheus source against a real Prometheus scraping a fake gateway,
//! and against a fake Prometheus giving broken answers.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::routing::get;
use jiff::{SignedDuration, Timestamp};
use reco_metric_source::{
    MetricSource, PrometheusSource, QueryFailure, SourceError, Url, WindowQuery, escape_promql_string,
};
use reco_rollout::{GroupCounts, SideMetrics, WindowMetrics};
use tokio::net::TcpListener;

use crate::fake_gateway::{FakeGateway, P99, Traffic, USER_GROUPS_SERVED};
use crate::prometheus_server::PrometheusServer;
use crate::{assert_latency, window};

/// A pipeline and a version named to break out of a PromQL string.
const HOSTILE_PIPELINE: &str = r#"home"} or vector(1000) or up{job=""#;
const HOSTILE_VERSION: &str = "v1\\\"\n) or vector(7";

fn clicks_selector(pipeline: &str, version: &str) -> String {
    format!(
        "reco_clicks_total{{pipeline={},model_version={}}}",
        escape_promql_string(pipeline),
        escape_promql_string(version)
    )
}

/// Asserts a side: counts within `[expected, expected × 1.3]` (rounded) to
/// allow for `increase()` extrapolation, exact when `exact`; p99 up to float
/// error; `context` is appended to a failure's message.
#[track_caller]
fn assert_side(actual: &SideMetrics, expected: &Traffic, exact: bool, context: &str) {
    let pairs = [
        ("impressions", actual.impressions, expected.impressions),
        ("clicks", actual.clicks, expected.clicks),
        ("requests", actual.requests, expected.requests),
        ("errors", actual.errors, expected.errors),
    ];
    for (name, actual, expected) in pairs {
        let ceiling = if exact { expected } else { (expected as f64 * 1.3).round() as u64 };
        assert!((expected..=ceiling).contains(&actual), "{name}: {actual} not in [{expected}, {ceiling}]{context}");
    }
    // The p99 reads the buckets against the request counter: both are
    // extrapolated estimates in a window that is not exact.
    match (exact, actual.p99_latency_seconds()) {
        (true, p99) => assert_latency(p99, P99),
        (false, p99) => assert!(p99.is_some_and(|p99| (p99 - P99).abs() < 0.01 * P99), "p99 {p99:?}{context}"),
    }
    let by_group = |count: fn(&GroupCounts) -> u64| actual.groups.values().map(count).sum::<u64>();
    assert_eq!(by_group(|g| g.impressions), actual.impressions, "impressions by user group{context}");
    assert_eq!(by_group(|g| g.clicks), actual.clicks, "clicks by user group{context}");
    if expected.impressions > 1 {
        assert_eq!(actual.groups.keys().copied().collect::<Vec<_>>(), USER_GROUPS_SERVED, "user groups{context}");
    }
}

#[tokio::test]
async fn reads_windows_from_a_real_prometheus() {
    let test_start = Timestamp::now();
    let gateway = FakeGateway::start().await;
    // Every series exists, at zero, before Prometheus first scrapes it: its
    // first sample is 0, so `increase()` does not extrapolate before it.
    for (pipeline, version) in [("home", "v1"), ("home", "v2"), (HOSTILE_PIPELINE, HOSTILE_VERSION)] {
        gateway.serve(pipeline, version, &Traffic::default());
    }
    gateway.mirror("home", "v3", &Traffic::default());
    let prometheus = PrometheusServer::start(gateway.addr()).await;
    let v1_clicks = clicks_selector("home", "v1");
    prometheus.wait_for(&format!("min(count_over_time({v1_clicks}[1h]))"), 2.0).await;

    let (v1, v2, v3, hostile) = (
        Traffic::new(300, 30, 300, 3),
        Traffic::new(100, 9, 100, 1),
        Traffic::new(0, 0, 70, 7),
        Traffic::new(40, 4, 40, 0),
    );
    gateway.serve("home", "v1", &v1);
    gateway.serve("home", "v2", &v2);
    gateway.mirror("home", "v3", &v3);
    gateway.serve(HOSTILE_PIPELINE, HOSTILE_VERSION, &hostile);
    prometheus.wait_for(&format!("sum({v1_clicks})"), 30.0).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // Exact: a window covering the whole series and ending at its last
    // sample leaves `increase()` nothing to extrapolate.
    let last_sample = prometheus.value(&format!("max(timestamp({v1_clicks}))")).await.expect("a sample");
    let at_last_sample = Timestamp::from_millisecond((last_sample * 1000.0).round() as i64).expect("valid time");
    let source = PrometheusSource::new(prometheus.base()).expect("a source").with_min_range(Duration::from_secs(2));
    let whole = |pipeline: &str, stable: &str, candidate: &str, shadow: bool| {
        window(pipeline, stable, candidate, shadow, test_start - SignedDuration::from_mins(1), at_last_sample)
    };
    let canary = source.window(&whole("home", "v1", "v2", false)).await.expect("a window");
    assert_side(&canary.stable, &v1, true, "");
    assert_side(&canary.candidate, &v2, true, "");
    let shadow = source.window(&whole("home", "v1", "v3", true)).await.expect("a window");
    assert_side(&shadow.stable, &v1, true, "");
    assert_side(&shadow.candidate, &v3, true, "");
    assert_eq!((shadow.candidate.impressions, shadow.candidate.clicks), (0, 0), "a shadow shows nothing");
    // The hostile names are matched literally, and inject nothing.
    let hostile_window = source.window(&whole(HOSTILE_PIPELINE, HOSTILE_VERSION, "v2", false)).await.expect("a window");
    assert_side(&hostile_window.stable, &hostile, true, "");
    assert_eq!(hostile_window.candidate, SideMetrics::default(), "v2 serves only pipeline home");
    // A version without series: no traffic, not an error.
    let unknown = source.window(&whole("home", "v1", "v404", false)).await.expect("a window");
    assert_eq!(unknown.candidate, SideMetrics::default());
    // Scoped: another namespace or another job reads nothing; the gateways' job reads it all.
    let elsewhere = WindowQuery { namespace: "other".into(), ..whole("home", "v1", "v2", false) };
    assert_eq!(source.window(&elsewhere).await.expect("a window").stable, SideMetrics::default());
    let other_job = source.clone().with_job("not-the-gateways");
    assert_eq!(
        other_job.window(&whole("home", "v1", "v2", false)).await.expect("a window").stable,
        SideMetrics::default()
    );
    let gateway_job = source.clone().with_job("gateway");
    let scoped = gateway_job.window(&whole("home", "v1", "v2", false)).await.expect("a window");
    assert_side(&scoped.stable, &v1, true, "");
    // CUPED's pre-rollout counts: every version of the pipeline, per user group.
    let before = WindowQuery {
        before: Some((test_start - SignedDuration::from_mins(1), at_last_sample)),
        ..whole("home", "v1", "v2", false)
    };
    let groups = source.window(&before).await.expect("a window").before;
    let served = |count: fn(&Traffic) -> u64| count(&v1) + count(&v2);
    assert_eq!(groups.values().map(|g| g.impressions).sum::<u64>(), served(|t| t.impressions), "{groups:?}");
    assert_eq!(groups.values().map(|g| g.clicks).sum::<u64>(), served(|t| t.clicks), "{groups:?}");

    // Within tolerance: a window starting between two scrapes, ending now.
    // The traffic comes 2 s into the window, after a scrape inside it:
    // `increase()` sees only deltas between samples in its range, so
    // traffic before the window's first sample would be lost.
    let middle = Timestamp::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (v1_more, v2_more) = (Traffic::new(200, 20, 200, 2), Traffic::new(100, 10, 100, 1));
    gateway.serve("home", "v1", &v1_more);
    gateway.serve("home", "v2", &v2_more);
    prometheus.wait_for(&format!("sum({v1_clicks})"), 50.0).await;
    // A range of at least 12 s with 1 s scrapes: extrapolation adds at most
    // ~2.2 s to ~9.8 s sampled, under the 30% the assertion allows.
    let wait = (middle + SignedDuration::from_secs(12)).duration_since(Timestamp::now());
    tokio::time::sleep(wait.try_into().unwrap_or_default()).await;
    let recent_window = window("home", "v1", "v2", false, middle, Timestamp::now());
    let recent = source.window(&recent_window).await.expect("a window");
    let context = format!("\nwindow {recent_window:?}\nsamples {}", prometheus.raw(&format!("{v1_clicks}[30s]")).await);
    assert_side(&recent.stable, &v1_more, false, &context);
    assert_side(&recent.candidate, &v2_more, false, &context);
}

/// A fake Prometheus: `/<mode>/api/v1/query` answers according to `mode`.
async fn fake_prometheus() -> String {
    async fn answer(Path(mode): Path<String>, Query(params): Query<HashMap<String, String>>) -> (StatusCode, String) {
        let query = params.get("query").cloned().unwrap_or_default();
        let vector = |value: &str| {
            format!(
                r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[1,"{value}"]}}]}}}}"#
            )
        };
        match mode.as_str() {
            "garbage" => (StatusCode::OK, "<html>not an API</html>".into()),
            "rejected" => (
                StatusCode::BAD_REQUEST,
                r#"{"status":"error","errorType":"bad_data","error":"1:1: parse error"}"#.into(),
            ),
            "http500" => (StatusCode::INTERNAL_SERVER_ERROR, "internal error".into()),
            "hang" => {
                tokio::time::sleep(Duration::from_secs(10)).await;
                (StatusCode::OK, vector("1"))
            }
            "empty" => (StatusCode::OK, r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#.into()),
            "fractions" => {
                let label = if query.starts_with("sum by (user_group)") {
                    r#"{"user_group":"5"}"#
                } else if query.starts_with("sum by (le)") {
                    r#"{"le":"+Inf"}"#
                } else {
                    "{}"
                };
                let body = format!(
                    r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{label},"value":[1,"2.6"]}}]}}}}"#
                );
                (StatusCode::OK, body)
            }
            _ => (StatusCode::NOT_FOUND, "unknown mode".into()),
        }
    }
    let app = Router::new().route("/{mode}/api/v1/query", get(answer));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn look(base: &str, mode: &str) -> Result<WindowMetrics, SourceError> {
    let url: Url = format!("{base}/{mode}").parse().expect("valid URL");
    let source = PrometheusSource::new(url).expect("a source").with_timeout(Duration::from_millis(300));
    let now = Timestamp::now();
    source.window(&window("home", "v1", "v2", false, now - SignedDuration::from_mins(10), now)).await
}

#[tokio::test]
async fn broken_answers_fail_naming_the_query() {
    let base = fake_prometheus().await;
    type Expected = fn(&QueryFailure) -> bool;
    let cases: [(&str, Expected); 4] = [
        ("garbage", |f| matches!(f, QueryFailure::Malformed(m) if m.starts_with("not Prometheus API JSON"))),
        ("rejected", |f| {
            *f == QueryFailure::Rejected { error_type: "bad_data".into(), error: "1:1: parse error".into() }
        }),
        ("http500", |f| *f == QueryFailure::Http { status: 500, detail: "internal error".into() }),
        ("hang", |f| matches!(f, QueryFailure::Request(r) if r.contains("timed out"))),
    ];
    for (mode, expected) in cases {
        let error = look(&base, mode).await.expect_err(mode);
        let message = error.to_string();
        let SourceError::Prometheus { url, query, failure } = error else { panic!("{mode}: {message}") };
        assert_eq!(url.as_str(), format!("{base}/{mode}/api/v1/query"), "{mode}");
        assert!(query.contains(r#"{pipeline="home",namespace="shop",model_version="v"#), "{mode}: {query}");
        assert!(expected(&failure), "{mode}: {failure:?}");
        assert_eq!(message, format!("Prometheus query `{query}` at {url} failed: {failure}"));
    }
}

#[tokio::test]
async fn empty_answers_are_no_traffic_and_fractions_round() {
    let base = fake_prometheus().await;
    let empty = look(&base, "empty").await.expect("a window");
    assert_eq!(empty, WindowMetrics::default());
    let fractions = look(&base, "fractions").await.expect("a window");
    let three = SideMetrics {
        impressions: 3,
        clicks: 3,
        requests: 3,
        errors: 3,
        latency: Vec::new(),
        latency_count: 3,
        groups: [(5, GroupCounts { impressions: 3, clicks: 3 })].into(),
    };
    assert_eq!(fractions, WindowMetrics { stable: three.clone(), candidate: three, before: Default::default() });
}
