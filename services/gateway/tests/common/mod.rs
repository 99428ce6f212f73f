//! Test harness: a real gateway on 127.0.0.1:0 in front of in-test doubles of the proto
//! services. The doubles are deliberately simple and say what they are: an in-memory feature
//! store, an events service that applies events to it, a retrieval that returns a fixed
//! catalogue (minus exclusions) scored per version, and a ranking that keeps retrieval's order.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

/// A real redis-server on a free loopback port, started as the features tests start it.
#[path = "../../../features/tests/common/mod.rs"]
pub mod redis_server;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use prometheus_client::registry::Registry;
use reco_gateway::{Backends, GatewayArgs, Metrics, StaticBackends, VersionBackend, VersionSource};
use reco_proto::events_server::Events;
use reco_proto::features_server::Features;
use reco_proto::ranking_server::Ranking;
use reco_proto::retrieval_server::Retrieval;
use reco_proto::{
    Candidate, GetItemCountersRequest, GetItemCountersResponse, GetUserRequest, IngestRequest, IngestResponse,
    RankRequest, RankResponse, RankedItem, RetrieveRequest, RetrieveResponse, SessionEvent, UserFeatures,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

pub const PIPELINE: &str = "explore";
pub const KEY: &str = "test-key-test-key-test-key-test-key";
pub const CATALOGUE: usize = 30;
/// Items of the catalogue double are in categories `c0`..`c4` (item i in `c{i % 5}`).
pub const CATEGORIES: usize = 5;

pub fn item_id(i: usize) -> String {
    format!("item-{i:02}")
}

/// In-memory feature store: users exist once they have an event; everyone else is cold.
#[derive(Default, Clone)]
pub struct MemoryFeatures {
    pub users: Arc<Mutex<HashMap<String, UserFeatures>>>,
    /// While set, every user read fails as an unreachable store does.
    pub down: Arc<std::sync::atomic::AtomicBool>,
    /// Milliseconds every user read waits before answering, as a slow store does.
    pub delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

#[tonic::async_trait]
impl Features for MemoryFeatures {
    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<UserFeatures>, Status> {
        if self.down.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Status::unavailable("feature store unreachable"));
        }
        let delay = self.delay_ms.load(std::sync::atomic::Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let user_id = request.into_inner().user_id;
        let users = self.users.lock().expect("lock");
        let user = users.get(&user_id).cloned().unwrap_or(UserFeatures { user_id, known: false, ..Default::default() });
        Ok(Response::new(user))
    }

    async fn get_item_counters(
        &self,
        _: Request<GetItemCountersRequest>,
    ) -> Result<Response<GetItemCountersResponse>, Status> {
        Ok(Response::new(GetItemCountersResponse::default()))
    }
}

/// Applies events to [`MemoryFeatures`] (hides go to the session, the rest to the history) and
/// refuses unknown item ids with INVALID_ARGUMENT, as the real events service does.
#[derive(Clone)]
pub struct MemoryEvents {
    pub features: MemoryFeatures,
    pub received: Arc<Mutex<Vec<reco_proto::Event>>>,
}

#[tonic::async_trait]
impl Events for MemoryEvents {
    async fn ingest(&self, request: Request<IngestRequest>) -> Result<Response<IngestResponse>, Status> {
        let events = request.into_inner().events;
        for event in &events {
            if !(0..CATALOGUE).any(|i| item_id(i) == event.item_id) {
                return Err(Status::invalid_argument(format!("unknown item id {:?}", event.item_id)));
            }
        }
        let mut users = self.features.users.lock().expect("lock");
        for event in &events {
            let user = users.entry(event.user_id.clone()).or_insert_with(|| UserFeatures {
                user_id: event.user_id.clone(),
                known: true,
                ..Default::default()
            });
            if event.r#type == i32::from(reco_proto::EventType::Hide) {
                user.session.push(SessionEvent {
                    item_id: event.item_id.clone(),
                    r#type: event.r#type,
                    ..Default::default()
                });
            } else {
                user.history.push(event.item_id.clone());
            }
        }
        self.received.lock().expect("lock").extend(events.iter().cloned());
        Ok(Response::new(IngestResponse { accepted: u32::try_from(events.len()).unwrap_or(u32::MAX), duplicates: 0 }))
    }
}

/// How a double misbehaves for users (the fallback refresh's anonymous user always succeeds
/// at once).
#[derive(Clone, Copy, Debug, Default)]
pub enum Behaviour {
    #[default]
    Normal,
    Sleep(Duration),
    Fail,
}

impl Behaviour {
    async fn apply(self, user: Option<&UserFeatures>) -> Result<(), Status> {
        let personal = user.is_some_and(|u| u.user_id != reco_gateway::FALLBACK_USER);
        match (self, personal) {
            (Behaviour::Sleep(duration), true) => {
                tokio::time::sleep(duration).await;
                Ok(())
            }
            (Behaviour::Fail, true) => Err(Status::unavailable("test double told to fail")),
            _ => Ok(()),
        }
    }
}

/// Fixed catalogue retrieval: `version` "v1" prefers low item numbers, other versions high
/// ones, so versions give different pages; the source names the version.
pub struct CatalogueRetrieval {
    pub version: String,
    pub behaviour: Behaviour,
}

#[tonic::async_trait]
impl Retrieval for CatalogueRetrieval {
    async fn retrieve(&self, request: Request<RetrieveRequest>) -> Result<Response<RetrieveResponse>, Status> {
        let request = request.into_inner();
        self.behaviour.apply(request.user.as_ref()).await?;
        let candidates = (0..CATALOGUE)
            .map(|i| {
                let rank = if self.version == "v1" { i } else { CATALOGUE - 1 - i };
                Candidate {
                    item_id: item_id(i),
                    source: self.version.clone(),
                    score: 1.0 - rank as f32 / 100.0,
                    category: format!("c{}", i % CATEGORIES),
                    two_tower_rank: -1,
                    item_to_item_rank: -1,
                    popular_rank: -1,
                    ..Default::default()
                }
            })
            .filter(|c| !request.exclude_item_ids.contains(&c.item_id))
            .take(request.k as usize)
            .collect();
        Ok(Response::new(RetrieveResponse { model_version: self.version.clone(), candidates, user_embedding: vec![] }))
    }
}

/// Keeps retrieval's scores.
pub struct PassThroughRanking {
    pub version: String,
    pub behaviour: Behaviour,
    /// Gives every item a one-hot embedding of its category (`cN` → axis N), for reranking by
    /// diversity; without it items have none.
    pub embed_by_category: bool,
}

#[tonic::async_trait]
impl Ranking for PassThroughRanking {
    async fn rank(&self, request: Request<RankRequest>) -> Result<Response<RankResponse>, Status> {
        let request = request.into_inner();
        self.behaviour.apply(request.user.as_ref()).await?;
        let items = request
            .candidates
            .into_iter()
            .map(|c| RankedItem {
                embedding: if self.embed_by_category { one_hot_category(&c.category) } else { Vec::new() },
                item_id: c.item_id,
                score: c.score,
                source: c.source,
                category: c.category,
                ..Default::default()
            })
            .collect();
        Ok(Response::new(RankResponse { model_version: self.version.clone(), items }))
    }
}

/// The embedding of an item of category `cN`: axis N of [`CATEGORIES`] dimensions.
pub fn one_hot_category(category: &str) -> Vec<f32> {
    let axis: usize = category.trim_start_matches('c').parse().expect("category cN");
    (0..CATEGORIES).map(|i| if i == axis { 1.0 } else { 0.0 }).collect()
}

/// One version's doubles and how they behave.
#[derive(Clone, Copy, Debug, Default)]
pub struct VersionPlan {
    pub retrieval: Behaviour,
    pub ranking: Behaviour,
    /// See [`PassThroughRanking::embed_by_category`].
    pub embed_by_category: bool,
}

pub struct Options {
    pub versions: Vec<(&'static str, VersionPlan)>,
    /// Routing file contents; `None`: no routing file.
    pub routing: Option<String>,
    pub flags: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            versions: vec![("v1", VersionPlan::default()), ("v2", VersionPlan::default())],
            routing: Some(routing(&[("v1", 100)], None)),
            flags: Vec::new(),
        }
    }
}

pub fn routing(versions: &[(&str, u8)], shadow: Option<&str>) -> String {
    let mut yaml = format!("pipeline: {PIPELINE}\nsalt: {PIPELINE}\nversions:\n");
    for (name, weight) in versions {
        yaml.push_str(&format!("  - name: {name}\n    weight: {weight}\n"));
    }
    if let Some(shadow) = shadow {
        yaml.push_str(&format!("shadow: {shadow}\n"));
    }
    yaml
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: GatewayArgs,
}

pub struct TestGateway {
    pub base: String,
    pub grpc: std::net::SocketAddr,
    pub client: reqwest::Client,
    pub routing_path: PathBuf,
    pub features: MemoryFeatures,
    pub events: MemoryEvents,
    cancel: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

pub fn http_client() -> reqwest::Client {
    reco_runtime::tls::install_crypto_provider();
    reqwest::Client::builder().no_proxy().build().expect("client")
}

pub async fn start(options: Options) -> TestGateway {
    let dir = tempfile::tempdir().expect("tempdir");
    let routing_path = dir.path().join("routing.yaml");
    let mut flags: Vec<String> = vec![
        "gateway".into(),
        format!("--pipeline={PIPELINE}"),
        format!("--token-key={KEY}"),
        "--reload-interval-ms=100".into(),
    ];
    if let Some(text) = &options.routing {
        std::fs::write(&routing_path, text).expect("write routing");
        flags.push(format!("--routing-file={}", routing_path.display()));
    }
    flags.extend(options.flags.iter().cloned());
    let args = Cli::try_parse_from(&flags).expect("flags").args;
    let features = MemoryFeatures::default();
    let events = MemoryEvents { features: features.clone(), received: Arc::default() };
    let versions = StaticBackends::new(options.versions.iter().map(|(name, plan)| {
        let backend = VersionBackend {
            retrieval: Arc::new(CatalogueRetrieval { version: (*name).to_owned(), behaviour: plan.retrieval }),
            ranking: Arc::new(PassThroughRanking {
                version: (*name).to_owned(),
                behaviour: plan.ranking,
                embed_by_category: plan.embed_by_category,
            }),
        };
        ((*name).to_owned(), backend)
    }));
    let backends = Backends {
        features: Arc::new(features.clone()),
        events: Arc::new(events.clone()),
        versions: VersionSource::Static(Arc::new(versions)),
    };
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind grpc");
    let base = format!("http://{}", http.local_addr().expect("addr"));
    let grpc_addr = grpc.local_addr().expect("addr");
    let cancel = CancellationToken::new();
    let shutdown = cancel.clone().cancelled_owned();
    tokio::spawn(async move {
        if let Err(error) =
            reco_gateway::serve_on(http, grpc, args, backends, metrics, Arc::new(registry), shutdown).await
        {
            panic!("gateway failed: {error}");
        }
    });
    TestGateway { base, grpc: grpc_addr, client: http_client(), routing_path, features, events, cancel, _dir: dir }
}

impl TestGateway {
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let response = self.client.post(format!("{}{path}", self.base)).json(body).send().await.expect("request sent");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path} answered {status} non-JSON {text:?}"));
        (status, json)
    }

    pub async fn post_raw(&self, path: &str, content_type: Option<&str>, body: Vec<u8>) -> (u16, String) {
        let mut request = self.client.post(format!("{}{path}", self.base)).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.expect("request sent");
        (response.status().as_u16(), response.text().await.expect("body"))
    }

    pub async fn recommend(&self, user: &str) -> serde_json::Value {
        let (status, body) = self.post("/v1/recommend", &serde_json::json!({"user_id": user, "page_size": 10})).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn event(&self, token: &str, user: &str, item: &str, kind: &str) -> (u16, serde_json::Value) {
        let body = serde_json::json!({"token": token, "user_id": user, "item_id": item, "type": kind});
        self.post("/v1/events", &body).await
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self.client.get(format!("{}{path}", self.base)).send().await.expect("request sent");
        (response.status().as_u16(), response.text().await.expect("body"))
    }

    /// The value of one series in /metrics (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .map(|value| value.trim().parse().expect("number"))
            .unwrap_or(0.0)
    }

    /// The sum of a per-version series over its other labels (`user_group`), 0 when absent.
    pub async fn version_total(&self, name: &str, version: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        let prefix = format!("{name}{{pipeline=\"{PIPELINE}\",model_version=\"{version}\"");
        text.lines()
            .filter_map(|line| line.strip_prefix(&prefix))
            .filter(|rest| rest.starts_with(['}', ',']))
            .filter_map(|rest| rest.rsplit_once(' '))
            .map(|(_, value)| value.trim().parse::<f64>().expect("number"))
            .sum()
    }

    pub fn write_routing(&self, text: &str) {
        // Through a rename, like a ConfigMap update (never a half-written file).
        let tmp = self.routing_path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, &self.routing_path).expect("rename");
    }

    /// Waits until `check` holds, polling; panics after `limit`.
    pub async fn eventually<F: Future<Output = bool>>(&self, limit: Duration, what: &str, check: impl Fn() -> F) {
        let started = Instant::now();
        while !check().await {
            assert!(started.elapsed() < limit, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the fallback list is loaded (a degraded answer has items).
    pub async fn wait_ready(&self) {
        self.eventually(Duration::from_secs(5), "readiness", || async { self.get("/readyz").await.0 == 200 }).await;
    }
}

pub fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

pub fn version_series(name: &str, version: &str) -> String {
    series(name, &[("pipeline", PIPELINE), ("model_version", version)])
}
