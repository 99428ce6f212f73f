//! A fake gateway: an axum server on loopback whose `/metrics` is rendered by
//! `prometheus-client` with the real series names and labels, and whose
//! counters the tests bump. It can be stopped and restarted on the same port
//! with fresh counters, like a restarted pod.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use reco_contracts::metrics::{self as signals, PIPELINE_LABEL, USER_GROUP_LABEL, VERSION_LABEL};
use reco_metric_source::Url;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Upper bounds of the latency buckets (plus `+Inf`).
pub const BUCKETS: [f64; 7] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

type Labels = Vec<(String, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// What a version did, to add to the gateway's counters.
#[derive(Clone, Debug, Default)]
pub struct Traffic {
    pub impressions: u64,
    pub clicks: u64,
    pub requests: u64,
    pub errors: u64,
    pub latencies: Vec<f64>,
}

impl Traffic {
    /// `requests` requests, `errors` of them failed, `impressions` shown,
    /// `clicks` clicked; 90% took 20 ms and 10% took 200 ms, so the p99 is
    /// [`P99`] whatever the size (a multiple of 10 requests).
    pub fn new(impressions: u64, clicks: u64, requests: u64, errors: u64) -> Self {
        let latencies = (0..requests).map(|i| if i % 10 == 9 { 0.2 } else { 0.02 }).collect();
        Traffic { impressions, clicks, requests, errors, latencies }
    }
}

/// p99 of [`Traffic::new`] latencies: rank 99% lies in (0.1, 0.25] at 9 of its 10%.
pub const P99: f64 = 0.1 + (0.25 - 0.1) * (9.0 / 10.0);

struct Metrics {
    registry: Registry,
    impressions: Family<Labels, Counter>,
    clicks: Family<Labels, Counter>,
    requests: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    latency: Histograms,
    shadow_requests: Family<Labels, Counter>,
    shadow_errors: Family<Labels, Counter>,
    shadow_latency: Histograms,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let mut counter = |name: &str| {
            let family = Family::<Labels, Counter>::default();
            // prometheus-client appends `_total` to counters itself.
            let base = name.strip_suffix("_total").expect("counter names end in _total");
            registry.register(base, format!("{name} of the fake gateway"), family.clone());
            family
        };
        let (impressions, clicks, requests, errors, shadow_requests, shadow_errors) = (
            counter(signals::IMPRESSIONS),
            counter(signals::CLICKS),
            counter(signals::REQUESTS),
            counter(signals::ERRORS),
            counter(signals::SHADOW_REQUESTS),
            counter(signals::SHADOW_ERRORS),
        );
        let mut histogram = |name: &str| {
            let family = Histograms::new_with_constructor(latency_histogram);
            registry.register(name, format!("{name} of the fake gateway"), family.clone());
            family
        };
        let (latency, shadow_latency) = (histogram(signals::LATENCY), histogram(signals::SHADOW_LATENCY));
        Metrics {
            registry,
            impressions,
            clicks,
            requests,
            errors,
            latency,
            shadow_requests,
            shadow_errors,
            shadow_latency,
        }
    }
}

pub struct FakeGateway {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

impl FakeGateway {
    pub async fn start() -> Self {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    async fn bind(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind the fake gateway");
        let addr = listener.local_addr().expect("local address");
        let metrics = Arc::new(Metrics::new());
        let app = Router::new().route("/metrics", get(render)).with_state(metrics.clone());
        let (shutdown, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .expect("fake gateway serves");
        });
        FakeGateway { addr, metrics, shutdown, server }
    }

    /// Stops serving; the port refuses connections afterwards.
    pub async fn stop(self) -> SocketAddr {
        let _ = self.shutdown.send(());
        self.server.await.expect("fake gateway stops");
        self.addr
    }

    /// Stops and starts again on the same port, counters back to zero.
    pub async fn restart(self) -> Self {
        let addr = self.stop().await;
        Self::bind(addr).await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> Url {
        format!("http://{}/metrics", self.addr).parse().expect("valid URL")
    }

    /// Adds traffic served by `version` (creating its series, at zero for
    /// an empty `traffic`): impressions and clicks split over
    /// [`USER_GROUPS_SERVED`], the larger half in the first.
    pub fn serve(&self, pipeline: &str, version: &str, traffic: &Traffic) {
        let labels = labels(pipeline, version);
        let m = &self.metrics;
        for (group, share) in USER_GROUPS_SERVED.iter().zip([half_up, half_down]) {
            let mut grouped = labels.clone();
            grouped.push((USER_GROUP_LABEL.into(), group.to_string()));
            m.impressions.get_or_create(&grouped).inc_by(share(traffic.impressions));
            m.clicks.get_or_create(&grouped).inc_by(share(traffic.clicks));
        }
        m.requests.get_or_create(&labels).inc_by(traffic.requests);
        m.errors.get_or_create(&labels).inc_by(traffic.errors);
        let histogram = m.latency.get_or_create(&labels);
        traffic.latencies.iter().for_each(|&l| histogram.observe(l));
    }

    /// Adds traffic mirrored to shadow `version` (impressions and clicks do
    /// not exist for it).
    pub fn mirror(&self, pipeline: &str, version: &str, traffic: &Traffic) {
        let labels = labels(pipeline, version);
        let m = &self.metrics;
        m.shadow_requests.get_or_create(&labels).inc_by(traffic.requests);
        m.shadow_errors.get_or_create(&labels).inc_by(traffic.errors);
        let histogram = m.shadow_latency.get_or_create(&labels);
        traffic.latencies.iter().for_each(|&l| histogram.observe(l));
    }
}

/// The user groups [`FakeGateway::serve`] counts impressions and clicks in.
pub const USER_GROUPS_SERVED: [u16; 2] = [1, 2];

fn half_up(count: u64) -> u64 {
    count.div_ceil(2)
}

fn half_down(count: u64) -> u64 {
    count / 2
}

fn labels(pipeline: &str, version: &str) -> Labels {
    vec![(PIPELINE_LABEL.into(), pipeline.into()), (VERSION_LABEL.into(), version.into())]
}

async fn render(State(metrics): State<Arc<Metrics>>) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    let mut body = String::new();
    encode(&mut body, &metrics.registry).expect("encoding to a String cannot fail");
    ([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
}
