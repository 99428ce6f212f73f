//! The scrape source against fake gateways: windows, sums across gateways,
//! counter resets, source restarts, unreachable and broken targets.

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use jiff::Timestamp;
use reco_metric_source::{MetricSource, ScrapeError, ScrapeSource, SourceError, Url};
use reco_rollout::{SideMetrics, WindowMetrics};
use tokio::net::TcpListener;

use crate::fake_gateway::{FakeGateway, P99, Traffic};
use crate::{assert_latency, window};

/// The side metrics of [`Traffic::new`] without the latency and the user groups.
fn counts(impressions: u64, clicks: u64, requests: u64, errors: u64) -> SideMetrics {
    SideMetrics { impressions, clicks, requests, errors, ..SideMetrics::default() }
}

/// Compares counts exactly, the p99 up to float error, and the user groups
/// with the counts ([`FakeGateway::serve`] splits them over two groups).
#[track_caller]
fn assert_side(actual: &SideMetrics, expected: SideMetrics, p99: Option<f64>) {
    assert_eq!(
        SideMetrics { latency: Vec::new(), latency_count: 0, groups: Default::default(), ..actual.clone() },
        expected
    );
    match p99 {
        Some(p99) => assert_latency(actual.p99_latency_seconds(), p99),
        None => assert_eq!(actual.p99_latency_seconds(), None),
    }
    let impressions: u64 = actual.groups.values().map(|g| g.impressions).sum();
    let clicks: u64 = actual.groups.values().map(|g| g.clicks).sum();
    assert_eq!((impressions, clicks), (actual.impressions, actual.clicks), "user groups {:?}", actual.groups);
}

async fn look(
    source: &ScrapeSource,
    pipeline: &str,
    stable: &str,
    candidate: &str,
    shadow: bool,
    start: Timestamp,
) -> WindowMetrics {
    source.window(&window(pipeline, stable, candidate, shadow, start, Timestamp::now())).await.expect("a window")
}

#[tokio::test]
async fn reads_windows_summed_across_gateways() {
    let (a, b) = (FakeGateway::start().await, FakeGateway::start().await);
    // Before the window: counted, but not in it.
    a.serve("home", "v1", &Traffic::new(1000, 100, 1000, 10));
    b.serve("home", "v2", &Traffic::new(500, 50, 500, 5));
    let source = ScrapeSource::new(vec![a.url(), b.url()]).expect("a source");
    source.scrape().await.expect("both gateways answer");
    let start = Timestamp::now();

    a.serve("home", "v1", &Traffic::new(300, 30, 300, 3));
    b.serve("home", "v1", &Traffic::new(200, 20, 200, 2));
    a.serve("home", "v2", &Traffic::new(100, 9, 100, 1));
    b.mirror("home", "v3", &Traffic::new(0, 0, 70, 7));
    // Other pipeline, other version: not read.
    a.serve("other", "v1", &Traffic::new(9999, 999, 9999, 99));
    b.serve("home", "v9", &Traffic::new(9999, 999, 9999, 99));

    let canary = look(&source, "home", "v1", "v2", false, start).await;
    assert_side(&canary.stable, counts(500, 50, 500, 5), Some(P99));
    assert_side(&canary.candidate, counts(100, 9, 100, 1), Some(P99));

    // Nothing new since the last look: the same window, the same counts.
    let again = look(&source, "home", "v1", "v2", false, start).await;
    assert_eq!(again, canary);

    let shadow = look(&source, "home", "v1", "v3", true, start).await;
    assert_side(&shadow.candidate, counts(0, 0, 70, 7), Some(P99));

    // A window starting now is empty: no requests, so no latency.
    let empty = look(&source, "home", "v1", "v2", false, Timestamp::now()).await;
    assert_eq!(empty.stable, SideMetrics::default());
    assert_eq!(empty.candidate, SideMetrics::default());
}

#[tokio::test]
async fn survives_a_gateway_restart() {
    let gateway = FakeGateway::start().await;
    gateway.serve("home", "v1", &Traffic::new(5000, 500, 5000, 50));
    let source = ScrapeSource::new(vec![gateway.url()]).expect("a source");
    source.scrape().await.expect("the gateway answers");
    let start = Timestamp::now();

    gateway.serve("home", "v1", &Traffic::new(100, 10, 100, 1));
    source.scrape().await.expect("the gateway answers");
    // The pod restarts: its counters start again from zero, below what the
    // source saw last.
    let gateway = gateway.restart().await;
    gateway.serve("home", "v1", &Traffic::new(30, 3, 30, 0));

    let metrics = look(&source, "home", "v1", "v2", false, start).await;
    assert_side(&metrics.stable, counts(130, 13, 130, 1), Some(P99));
    assert_eq!(metrics.candidate, SideMetrics::default());
}

#[tokio::test]
async fn a_restarted_source_starts_its_window_at_its_first_scrape() {
    let gateway = FakeGateway::start().await;
    let long_ago = Timestamp::now() - jiff::SignedDuration::from_hours(1);
    gateway.serve("home", "v1", &Traffic::new(5000, 500, 5000, 50));
    // A fresh source (the operator restarted) knows nothing of the past.
    let source = ScrapeSource::new(vec![gateway.url()]).expect("a source");
    let first = look(&source, "home", "v1", "v2", false, long_ago).await;
    assert_eq!(first.stable, SideMetrics::default());
    gateway.serve("home", "v1", &Traffic::new(10, 1, 10, 0));
    let second = look(&source, "home", "v1", "v2", false, long_ago).await;
    assert_side(&second.stable, counts(10, 1, 10, 0), Some(P99));
}

#[tokio::test]
async fn replaced_targets_keep_their_past_and_new_ones_start_at_their_first_scrape() {
    let (a, b) = (FakeGateway::start().await, FakeGateway::start().await);
    a.serve("home", "v1", &Traffic::default());
    b.serve("home", "v1", &Traffic::default());
    let source = ScrapeSource::new(vec![a.url(), b.url(), a.url()]).expect("a source");
    assert_eq!(source.targets(), vec![a.url(), b.url()], "duplicates would count twice");
    source.scrape().await.expect("both answer");
    let start = Timestamp::now();
    a.serve("home", "v1", &Traffic::new(10, 1, 10, 0));
    b.serve("home", "v1", &Traffic::new(20, 2, 20, 0));
    source.scrape().await.expect("both answer");

    // b goes away (its pod is deleted), c comes.
    let c = FakeGateway::start().await;
    c.serve("home", "v1", &Traffic::new(400, 40, 400, 4));
    source.set_targets(vec![a.url(), c.url()]);
    b.serve("home", "v1", &Traffic::new(1000, 100, 1000, 10));
    let after_swap = look(&source, "home", "v1", "v2", false, start).await;
    assert_side(&after_swap.stable, counts(30, 3, 30, 0), Some(P99));

    c.serve("home", "v1", &Traffic::new(50, 5, 50, 0));
    let later = look(&source, "home", "v1", "v2", false, start).await;
    assert_side(&later.stable, counts(80, 8, 80, 0), Some(P99));
}

/// A gateway answering `/hang` slowly, `/fail` with HTTP 500 and `/garbage`
/// with a broken exposition.
async fn broken_gateway() -> String {
    let app = Router::new()
        .route(
            "/hang",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                ""
            }),
        )
        .route("/fail", get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }))
        .route(
            "/garbage",
            get(|| async { "# TYPE reco_clicks counter\nreco_clicks_total{pipeline=\"home\",model_version=\"v1} 3\n" }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn failed_targets_fail_the_window_and_are_named() {
    let alive = FakeGateway::start().await;
    alive.serve("home", "v1", &Traffic::new(10, 1, 10, 0));
    let gone = FakeGateway::start().await;
    let gone_url = gone.url();
    gone.stop().await;
    let broken = broken_gateway().await;
    let [hang, fail, garbage]: [Url; 3] =
        ["hang", "fail", "garbage"].map(|path| format!("{broken}/{path}").parse().expect("valid URL"));

    let source = ScrapeSource::new(vec![alive.url(), gone_url.clone(), hang.clone(), fail.clone(), garbage.clone()])
        .expect("a source")
        .with_timeout(Duration::from_millis(300));
    let error = source
        .window(&window("home", "v1", "v2", false, Timestamp::now(), Timestamp::now()))
        .await
        .expect_err("four targets fail");
    let message = error.to_string();
    let SourceError::Scrape { total, failures } = error else { panic!("not a scrape error: {message}") };
    assert_eq!(total, 5);
    assert!(message.starts_with("4 of 5 scrape targets failed; "), "{message}");
    let [refused, timeout, status, malformed] = failures.try_into().expect("four failures, in target order");
    assert!(
        matches!(&refused, ScrapeError::Request { target, reason } if *target == gone_url && reason.contains("onnect")),
        "{refused}"
    );
    assert!(
        matches!(&timeout, ScrapeError::Request { target, reason } if *target == hang && reason.contains("timed out")),
        "{timeout}"
    );
    assert_eq!(status, ScrapeError::Http { target: fail, status: 500 });
    assert_eq!(
        malformed,
        ScrapeError::Malformed {
            target: garbage.clone(),
            line: 2,
            reason: "label model_version: unterminated value".into()
        }
    );
    for failure in [refused.to_string(), timeout.to_string(), malformed.to_string()] {
        assert!(message.contains(&failure), "{message} lacks {failure}");
    }
    assert!(malformed.to_string().starts_with(&format!("scraping {garbage}: malformed exposition at line 2")));

    // The targets that answered were still recorded: once the broken ones are
    // gone, the window counts from the first scrape of `alive`.
    source.set_targets(vec![alive.url()]);
    alive.serve("home", "v1", &Traffic::new(20, 2, 20, 0));
    let metrics =
        look(&source, "home", "v1", "v2", false, Timestamp::now() - jiff::SignedDuration::from_hours(1)).await;
    assert_side(&metrics.stable, counts(20, 2, 20, 0), Some(P99));

    source.set_targets(Vec::new());
    let none = source.window(&window("home", "v1", "v2", false, Timestamp::now(), Timestamp::now())).await;
    assert!(matches!(none, Err(SourceError::NoTargets)), "{none:?}");
}

#[tokio::test]
async fn a_window_ending_before_it_starts_is_refused() {
    let source = ScrapeSource::new(Vec::new()).expect("a source");
    let now = Timestamp::now();
    let error = source
        .window(&window("home", "v1", "v2", false, now, now - jiff::SignedDuration::from_secs(1)))
        .await
        .expect_err("invalid window");
    assert!(matches!(error, SourceError::InvalidWindow { .. }), "{error}");
}
