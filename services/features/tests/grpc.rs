//! The service over real gRPC (tonic on 127.0.0.1:0), with well-formed and hostile input.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reco_features::dedup::RecentEvents;
use reco_features::sink::SinkMetrics;
use reco_features::{EmbeddedStore, FeatureService, FeatureStore, FileSink, Limits, Metrics, RedisStore, read_log};
use reco_proto::events_client::EventsClient;
use reco_proto::features_client::FeaturesClient;
use reco_proto::{Event, EventType, GetItemCountersRequest, GetUserRequest, IngestRequest};
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::Channel;

struct Harness {
    features: FeaturesClient<Channel>,
    events: EventsClient<Channel>,
    service: FeatureService,
    registry: prometheus_client::registry::Registry,
    log: std::path::PathBuf,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start(store: Arc<dyn FeatureStore>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::register(&mut registry);
        let log = dir.path().join("events.jsonl");
        let sink = Arc::new(FileSink::open(&log, metrics.sink()).unwrap());
        let service = FeatureService::new("explore", store, sink, recent(), metrics);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn({
            let service = service.clone();
            async move {
                reco_proto::serve_on(reco_features::grpc_routes(service), listener, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            }
        });
        let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        Self {
            features: FeaturesClient::new(channel.clone()),
            events: EventsClient::new(channel),
            service,
            registry,
            log,
            stop: Some(stop),
            server,
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        self.server.await.unwrap();
    }

    fn metrics_text(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text
    }
}

/// An event of its own served page (a fresh request id), so no two are retries of each other.
fn event(user: &str, item: &str, kind: EventType) -> Event {
    static REQUESTS: AtomicU64 = AtomicU64::new(0);
    Event {
        user_id: user.into(),
        item_id: item.into(),
        r#type: kind as i32,
        dwell_ms: if kind == EventType::Dwell { 4000 } else { 0 },
        model_version: "v1".into(),
        request_id: format!("req-{}", REQUESTS.fetch_add(1, Ordering::Relaxed)),
        ..Default::default()
    }
}

fn recent() -> RecentEvents {
    RecentEvents::new(Duration::from_secs(600), 10_000)
}

async fn ingest(h: &mut Harness, events: Vec<Event>) -> Result<u32, tonic::Status> {
    h.events.ingest(IngestRequest { events }).await.map(|r| r.into_inner().accepted)
}

/// The read-your-writes contract over the wire, for a given backend.
async fn next_get_user_sees_the_event(store: Arc<dyn FeatureStore>) {
    let mut h = Harness::start(store).await;
    let cold = h.features.get_user(GetUserRequest { user_id: "42".into() }).await.unwrap().into_inner();
    assert!(!cold.known);
    assert_eq!(cold.user_id, "42");

    for (i, kind) in [EventType::Click, EventType::Dwell, EventType::Hide].into_iter().enumerate() {
        let accepted = ingest(&mut h, vec![event("42", &format!("m{i}"), kind)]).await.unwrap();
        assert_eq!(accepted, 1);
        let user = h.features.get_user(GetUserRequest { user_id: "42".into() }).await.unwrap().into_inner();
        assert!(user.known);
        let last = user.session.last().unwrap();
        assert_eq!((last.item_id.as_str(), last.r#type), (format!("m{i}").as_str(), kind as i32));
        assert_eq!(user.session.len(), i + 1);
    }
    let user = h.features.get_user(GetUserRequest { user_id: "42".into() }).await.unwrap().into_inner();
    assert_eq!(user.history, ["m0", "m1"]);
    assert_eq!(user.session[1].dwell_ms, 4000);
    assert_eq!(user.counters.get("hide"), Some(&1));

    let items = h
        .features
        .get_item_counters(GetItemCountersRequest { item_ids: vec!["m1".into(), "never".into()] })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(items.len(), 2);
    assert_eq!((items[0].item_id.as_str(), items[0].counters.get("dwell")), ("m1", Some(&1)));
    assert!(items[1].counters.is_empty());

    let logged = read_log(&h.log).unwrap().events;
    assert_eq!(logged.len(), 3);
    assert!(logged.iter().all(|e| e.pipeline == "explore" && e.model_version == "v1" && e.at_ms > 0));
    h.stop().await;
}

#[tokio::test]
async fn embedded_read_your_writes() {
    next_get_user_sees_the_event(Arc::new(EmbeddedStore::in_memory(Limits::default()))).await;
}

#[tokio::test]
async fn redis_read_your_writes() {
    let Some(server) = common::start_redis().await else { return };
    let store = RedisStore::connect(&server.url, "explore", Limits::default()).await.unwrap();
    next_get_user_sees_the_event(Arc::new(store)).await;
}

#[tokio::test]
async fn hostile_batches_are_rejected_whole_and_nothing_is_applied() {
    let mut h = Harness::start(Arc::new(EmbeddedStore::in_memory(Limits::default()))).await;
    h.service.set_catalog(HashSet::from(["m1".to_owned(), "m2".to_owned()]));
    let good = event("7", "m1", EventType::Like);
    let huge_id = "x".repeat(10 * 1024);
    let cases: Vec<(Vec<Event>, &str)> = vec![
        (vec![good.clone(), Event { user_id: String::new(), ..good.clone() }], "events[1].user_id: must not be empty"),
        (vec![Event { item_id: String::new(), ..good.clone() }], "events[0].item_id: must not be empty"),
        (vec![good.clone(), Event { user_id: huge_id.clone(), ..good.clone() }], "events[1].user_id: 10240 bytes"),
        (vec![Event { item_id: huge_id.clone(), ..good.clone() }], "events[0].item_id: 10240 bytes"),
        (
            vec![good.clone(), good.clone(), Event { item_id: "m999".into(), ..good.clone() }],
            "events[2].item_id: unknown item",
        ),
        (vec![Event { r#type: EventType::Unspecified as i32, ..good.clone() }], "events[0].type: must be specified"),
        (vec![Event { r#type: 77, ..good.clone() }], "events[0].type: unknown event type 77"),
        (vec![Event { r#type: EventType::Dwell as i32, dwell_ms: 0, ..good.clone() }], "events[0].dwell_ms: required"),
        (vec![good.clone(); 5000], "events: 5000 events, more than the limit of 1000"),
    ];
    for (events, expected) in cases {
        let n = events.len();
        let status = ingest(&mut h, events).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{expected}: {status:?}");
        assert!(status.message().starts_with(expected), "{n} events: got {:?}, want {expected:?}", status.message());
        assert!(status.message().len() < 200, "the error must not echo hostile input");
    }
    // Nothing from any rejected batch was applied or logged.
    let user = h.features.get_user(GetUserRequest { user_id: "7".into() }).await.unwrap().into_inner();
    assert!(!user.known);
    assert!(read_log(&h.log).unwrap().events.is_empty());
    assert!(h.metrics_text().contains("reco_features_events_rejected_total{field=\"item_id\"} 5"));

    // A valid batch after all that still works, and an empty batch accepts nothing.
    assert_eq!(ingest(&mut h, vec![good.clone(), event("7", "m2", EventType::Save)]).await.unwrap(), 2);
    assert_eq!(ingest(&mut h, vec![]).await.unwrap(), 0);
    assert!(h.metrics_text().contains("reco_features_events_ingested_total{event_type=\"like\"} 1"));
    h.stop().await;
}

#[tokio::test]
async fn hostile_reads_are_rejected() {
    let mut h = Harness::start(Arc::new(EmbeddedStore::in_memory(Limits::default()))).await;
    let cases = [String::new(), "u".repeat(10 * 1024), "a\u{0}b".into()];
    for user_id in cases {
        let status = h.features.get_user(GetUserRequest { user_id }).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with("user_id: "), "{}", status.message());
    }
    let too_many = GetItemCountersRequest { item_ids: vec!["i".into(); 1001] };
    let status = h.features.get_item_counters(too_many).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let bad = GetItemCountersRequest { item_ids: vec!["ok".into(), String::new()] };
    let status = h.features.get_item_counters(bad).await.unwrap_err();
    assert_eq!(status.message(), "item_ids[1]: must not be empty");
    let empty = h.features.get_item_counters(GetItemCountersRequest::default()).await.unwrap().into_inner();
    assert!(empty.items.is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_ingest_is_durable_and_counted_exactly() {
    let h = Harness::start(Arc::new(EmbeddedStore::in_memory(Limits::default()))).await;
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let mut events = h.events.clone();
            tokio::spawn(async move {
                for i in 0..20 {
                    let batch: Vec<_> =
                        (0..2).map(|_| event(&format!("u{t}"), &format!("m{i}"), EventType::Click)).collect();
                    let accepted = events.ingest(IngestRequest { events: batch }).await.unwrap().into_inner().accepted;
                    assert_eq!(accepted, 2);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(read_log(&h.log).unwrap().events.len(), 320);
    for t in 0..8 {
        let user = h.service.store().get_user(&format!("u{t}")).await.unwrap().unwrap();
        assert_eq!(user.counters["click"], 40);
    }
    h.stop().await;
}

#[tokio::test]
async fn a_closed_sink_makes_ingest_unavailable_and_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(FileSink::open(&dir.path().join("e.jsonl"), SinkMetrics::default()).unwrap());
    let store = Arc::new(EmbeddedStore::in_memory(Limits::default()));
    let metrics = Metrics::register(&mut Default::default());
    let service = FeatureService::new("explore", store.clone(), sink.clone(), recent(), metrics);
    reco_features::EventSink::close(sink.as_ref()).await.unwrap();
    let err = service.ingest(&[event("u", "i", EventType::Click)]).await.unwrap_err();
    assert_eq!(tonic::Status::from(err).code(), Code::Unavailable);
    assert!(store.get_user("u").await.unwrap().is_none(), "an event that is not durable must not be applied");
}

/// A client that timed out retries: every copy is acknowledged, the event is logged and applied
/// once, and concurrent copies wait for the first one's write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_are_acknowledged_and_applied_once() {
    let h = Harness::start(Arc::new(EmbeddedStore::in_memory(Limits::default()))).await;
    let hide = event("7", "m1", EventType::Hide);
    let with_client_id =
        Event { event_id: "client-1".into(), request_id: String::new(), ..event("7", "m2", EventType::Save) };
    let copies: Vec<_> = (0..16)
        .map(|_| {
            let mut events = h.events.clone();
            let batch = vec![hide.clone(), with_client_id.clone()];
            tokio::spawn(async move { events.ingest(IngestRequest { events: batch }).await.unwrap().into_inner() })
        })
        .collect();
    let mut duplicates = 0;
    for copy in copies {
        let answer = copy.await.unwrap();
        assert_eq!(answer.accepted, 2);
        duplicates += answer.duplicates;
    }
    assert!(duplicates >= 15 * 2 - 2, "{duplicates}");
    let logged = read_log(&h.log).unwrap().events;
    assert_eq!(logged.len(), 2, "{logged:?}");
    assert!(logged.iter().all(|e| e.event_id.as_ref().is_some_and(|id| id.len() == 32)));
    let user = h.service.store().get_user("7").await.unwrap().unwrap();
    assert_eq!((user.counters["hide"], user.counters["save"]), (1, 1));
    // The same page's event of another type, or another page's, is a new event.
    let again = h
        .events
        .clone()
        .ingest(IngestRequest {
            events: vec![
                Event { r#type: EventType::Click as i32, ..hide.clone() },
                Event { request_id: "other".into(), ..hide },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.accepted, again.duplicates), (2, 0));
    h.stop().await;
}
