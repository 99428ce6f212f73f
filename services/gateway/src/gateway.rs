//! The request path: route, cache, features -> retrieval -> ranking -> final rerank under a
//! deadline, fallback when late or failing, token, metrics, shadow mirroring; and events.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use moka::future::Cache;
use reco_contracts::route_for_user;
use reco_contracts::routing::{user_bucket, user_group};
use reco_core::rerank::{self, RerankError, RerankSettings};
use reco_core::token::{Claims, ItemDigest, TokenError, TokenSigner, UserDigest};
use reco_proto::events_server::Events;
use reco_proto::features_server::Features;
use reco_proto::{
    Context, Event, EventType, GetUserRequest, IngestRequest, RankRequest, RetrieveRequest, UserFeatures,
};
use tokio::sync::Semaphore;
use tonic::{Code, Request, Status};

use crate::api::{EventError, EventInput, Item, MAX_PAGE_SIZE, RecommendQuery, Recommendation, Recorded};
use crate::args::Settings;
use crate::backends::VersionBackend;
use crate::config::{ConfigError, Snapshot};
use crate::dedup::{Claim, Dedup};
use crate::metrics::{
    CacheLabels, EventLabels, GroupLabels, Metrics, PipelineLabels, ReasonLabels, SourceLabels, StageLabels,
    VersionLabels,
};

/// User id of the fallback request: unknown to every store (`known: false`), so retrieval
/// answers with its cold-start mix (popular, fresh, no personal history).
pub const FALLBACK_USER: &str = "reco-fallback-anonymous";
/// How many fallback items are kept (enough for the largest page after filtering).
const FALLBACK_ITEMS: u32 = 4 * MAX_PAGE_SIZE as u32;
/// Time limit of one fallback refresh.
const FALLBACK_TIMEOUT: Duration = Duration::from_secs(5);
const CACHE_NAME: &str = "recommendations";

/// A remote stage of [`Gateway::run`], in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Features,
    Retrieval,
    Ranking,
}

impl Stage {
    /// The `stage` label of `reco_stage_duration_seconds`, and the fallback reason of a failure.
    fn name(self) -> &'static str {
        match self {
            Self::Features => "features",
            Self::Retrieval => "retrieval",
            Self::Ranking => "ranking",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why [`Gateway::run`] gave no page, named for `reco_fallbacks_total{reason}`.
#[derive(Debug, thiserror::Error)]
enum StageError {
    #[error("{stage}: {status}")]
    Failed { stage: Stage, status: Status },
    #[error("{stage} was still running at the deadline")]
    Late { stage: Stage },
    #[error("rerank: {0}")]
    Rerank(RerankError),
}

impl StageError {
    fn reason(&self) -> &'static str {
        match self {
            Self::Failed { stage, .. } => stage.name(),
            Self::Late { .. } => "deadline",
            Self::Rerank(_) => "rerank",
        }
    }

    /// Whether the failure or lateness is of a dependency every version
    /// shares (the feature store): it is not the version's fault, and
    /// charging it to the routed version alone would let a shared outage (or
    /// slowdown) roll a good model back.
    fn is_shared(&self) -> bool {
        matches!(self, Self::Failed { stage: Stage::Features, .. } | Self::Late { stage: Stage::Features })
    }
}

/// Why the fallback list could not be refreshed.
#[derive(Debug, thiserror::Error)]
pub enum FallbackError {
    #[error("no routing table loaded yet")]
    NotReady,
    #[error("stable version {0:?} does not resolve")]
    Unresolved(String),
    #[error("retrieval of the stable version failed: {0}")]
    Retrieval(Status),
    #[error("retrieval of the stable version took longer than {FALLBACK_TIMEOUT:?}")]
    Timeout,
}

/// One cached page's identity: a new user generation (after an event) makes older pages unreachable.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct PageKey {
    user_id: String,
    generation: u64,
    version: String,
    page_size: usize,
    /// The context in a canonical form (attributes sorted).
    context: String,
}

/// Recommendation pages by user, invalidated per user by bumping the user's generation. A page is
/// kept whole, request id and token included, so serving it again is the same page.
///
/// A generation entry lives as long as a page does (same TTL), so when it expires every page of
/// the older generation has expired too. With several replicas only the replica that accepted
/// the event drops its pages; the others serve theirs until the TTL ends, which bounds staleness.
struct PageCache {
    pages: Cache<PageKey, Arc<Recommendation>>,
    generations: Cache<String, u64>,
    next_generation: AtomicU64,
}

impl PageCache {
    fn new(ttl: Duration, capacity: u64) -> Self {
        Self {
            pages: Cache::builder().max_capacity(capacity).time_to_live(ttl).build(),
            generations: Cache::builder().max_capacity(capacity.saturating_mul(4)).time_to_live(ttl).build(),
            next_generation: AtomicU64::new(1),
        }
    }

    async fn key(&self, query: &RecommendQuery, version: &str) -> PageKey {
        let context = &query.context;
        let attributes: BTreeMap<_, _> = context.attributes.iter().collect();
        PageKey {
            user_id: query.user_id.clone(),
            generation: self.generations.get(&query.user_id).await.unwrap_or(0),
            version: version.to_owned(),
            page_size: query.page_size,
            context: format!("{}\u{0}{:?}\u{0}{:?}", context.now_ms, context.content_types, attributes),
        }
    }

    async fn invalidate_user(&self, user_id: &str) {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        self.generations.insert(user_id.to_owned(), generation).await;
    }
}

/// A fallback item with the category used to honour `content_types`.
#[derive(Clone, Debug)]
struct FallbackItem {
    item: Item,
    category: String,
}

/// The gateway's request path, shared by the HTTP and gRPC faces. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    features: Arc<dyn Features>,
    events: Arc<dyn Events>,
    config: RwLock<Option<Arc<Snapshot>>>,
    cache: Option<PageCache>,
    fallback: RwLock<Arc<Vec<FallbackItem>>>,
    signer: TokenSigner,
    dedup: Dedup,
    shadow_permits: Arc<Semaphore>,
    metrics: Metrics,
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Gateway {
    pub fn new(
        settings: Settings,
        features: Arc<dyn Features>,
        events: Arc<dyn Events>,
        signer: TokenSigner,
        dedup: Dedup,
        metrics: Metrics,
    ) -> Self {
        let cache = settings.cache_ttl.map(|ttl| PageCache::new(ttl, settings.cache_capacity));
        let shadow_permits = Arc::new(Semaphore::new(settings.shadow_concurrency));
        Self {
            inner: Arc::new(Inner {
                settings,
                features,
                events,
                config: RwLock::new(None),
                cache,
                fallback: RwLock::new(Arc::new(Vec::new())),
                signer,
                dedup,
                shadow_permits,
                metrics,
            }),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Ready once a valid routing table is loaded (its versions resolved when it was checked).
    pub fn is_ready(&self) -> bool {
        self.snapshot().is_some()
    }

    fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.inner.config.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Applies a reload result: a new snapshot replaces the old one; an error keeps the last
    /// good configuration and is logged and counted.
    pub fn apply_config(&self, result: Result<Snapshot, ConfigError>) {
        match result {
            Ok(snapshot) => {
                tracing::info!(
                    versions = ?snapshot.routing.versions,
                    shadow = ?snapshot.routing.shadow,
                    "routing table loaded"
                );
                for routed in &snapshot.routing.versions {
                    self.inner.metrics.start_groups_at_zero(&self.inner.settings.pipeline, &routed.name);
                }
                *self.inner.config.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(snapshot));
            }
            Err(error) => {
                tracing::warn!(%error, "routing configuration refused; keeping the last good one");
                let labels = PipelineLabels { pipeline: self.inner.settings.pipeline.clone() };
                self.inner.metrics.routing_reload_errors.get_or_create(&labels).inc();
            }
        }
    }

    fn version_labels(&self, version: &str) -> VersionLabels {
        VersionLabels { pipeline: self.inner.settings.pipeline.clone(), model_version: version.to_owned() }
    }

    fn count_fallback(&self, reason: &'static str) {
        let labels = ReasonLabels { pipeline: self.inner.settings.pipeline.clone(), reason };
        self.inner.metrics.fallbacks.get_or_create(&labels).inc();
    }

    fn count_cache(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.inner.metrics.cache_requests.get_or_create(&CacheLabels { cache: CACHE_NAME, result }).inc();
    }

    /// Recommends a page. Never fails: backend failures and lateness give fallback items with
    /// `degraded = true`.
    pub async fn recommend(&self, query: RecommendQuery) -> Recommendation {
        let started = Instant::now();
        let routed = self.snapshot().and_then(|snapshot| {
            let version = route_for_user(&snapshot.routing, &query.user_id)?.to_owned();
            let backend = snapshot.backends.resolve(&version)?;
            Some((snapshot, version, backend))
        });
        let Some((snapshot, version, backend)) = routed else {
            self.count_fallback("not_ready");
            // No table, no salt: group 0, and a token naming no version counts no event anyway.
            return self.respond(&query.user_id, 0, String::new(), self.fallback_items(&query), true);
        };
        let labels = self.version_labels(&version);
        let key = match &self.inner.cache {
            Some(cache) => Some(cache.key(&query, &version).await),
            None => None,
        };
        let cached = match (&self.inner.cache, &key) {
            (Some(cache), Some(key)) => {
                let page = cache.pages.get(key).await;
                self.count_cache(page.is_some());
                page
            }
            _ => None,
        };
        let metrics = &self.inner.metrics;
        let shadow = snapshot.routing.shadow.as_deref().filter(|shadow| *shadow != version);
        if let Some(page) = cached {
            // The page already served, with its request id and token: its events dedupe against
            // the first serving, and showing it again is no new impression.
            metrics.requests.get_or_create(&labels).inc();
            metrics.latency.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
            if let Some(shadow) = shadow {
                let served = page.items.iter().map(|item| item.item_id.clone()).collect();
                self.mirror(shadow, &snapshot, query, None, Some(served));
            }
            return page.as_ref().clone();
        }
        let deadline = started + self.inner.settings.deadline;
        let (items, user, degraded) = match self.run(&backend, &query, &version, None, deadline).await {
            Ok((items, user)) => (items, Some(user), false),
            Err(error) => {
                tracing::warn!(%error, version, "recommend failed or ran late; serving fallback items");
                self.count_fallback(error.reason());
                if !error.is_shared() {
                    metrics.errors.get_or_create(&labels).inc();
                }
                (self.fallback_items(&query), None, true)
            }
        };
        let served = shadow.filter(|_| !degraded).map(|_| items.iter().map(|item| item.item_id.clone()).collect());
        let group = serving_group(&snapshot.routing.salt, &query.user_id);
        let answer = self.respond(&query.user_id, group, version, items, degraded);
        if let (false, Some(cache), Some(key)) = (degraded, &self.inner.cache, key) {
            cache.pages.insert(key, Arc::new(answer.clone())).await;
        }
        metrics.requests.get_or_create(&labels).inc();
        let impressions = GroupLabels {
            pipeline: labels.pipeline.clone(),
            model_version: labels.model_version.clone(),
            user_group: group,
        };
        metrics.impressions.get_or_create(&impressions).inc_by(answer.items.len() as u64);
        metrics.latency.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
        if let Some(shadow) = shadow {
            self.mirror(shadow, &snapshot, query, user, served);
        }
        answer
    }

    /// The answer with a fresh request id and a token bound to `user_id`, its group and the items.
    fn respond(
        &self,
        user_id: &str,
        user_group: u16,
        model_version: String,
        items: Vec<Item>,
        degraded: bool,
    ) -> Recommendation {
        let request_id = format!("{:032x}", rand::random::<u128>());
        let claims = Claims {
            pipeline: self.inner.settings.pipeline.clone(),
            model_version: model_version.clone(),
            request_id: request_id.clone(),
            issued_at: unix_now().as_secs(),
            user: UserDigest::of(user_id),
            user_group,
            items: items.iter().map(|item| ItemDigest::of(&item.item_id)).collect(),
        };
        // Cannot fail: pipeline and version names are bounded at load (MAX_NAME_LEN), pages by
        // MAX_PAGE_SIZE (see `the_largest_page_fits_in_a_token`).
        let token = self.inner.signer.sign(&claims).unwrap_or_else(|error| {
            tracing::error!(%error, "cannot sign a token");
            String::new()
        });
        Recommendation { request_id, model_version, token, items, degraded }
    }

    /// features -> retrieval -> ranking -> rerank for one version; `user` skips the features call.
    /// Each remote stage must answer by `deadline`, so that lateness is charged to the stage
    /// that was running (the shared features call is no version's fault).
    async fn run(
        &self,
        backend: &VersionBackend,
        query: &RecommendQuery,
        version: &str,
        user: Option<UserFeatures>,
        deadline: Instant,
    ) -> Result<(Vec<Item>, UserFeatures), StageError> {
        let settings = &self.inner.settings;
        let mut context = query.context.clone();
        if context.now_ms == 0 {
            context.now_ms = millis(unix_now());
        }
        let user = match user {
            Some(user) => user,
            None => {
                let request = Request::new(GetUserRequest { user_id: query.user_id.clone() });
                self.timed(version, Stage::Features, deadline, self.inner.features.get_user(request))
                    .await?
                    .into_inner()
            }
        };
        let excluded = excluded_items(&user);
        let request = RetrieveRequest {
            user: Some(user.clone()),
            k: settings.candidates,
            context: Some(context.clone()),
            exclude_item_ids: excluded.iter().map(|id| (*id).to_owned()).collect(),
        };
        let retrieved = self
            .timed(version, Stage::Retrieval, deadline, backend.retrieval.retrieve(Request::new(request)))
            .await?
            .into_inner();
        let request = RankRequest {
            user: Some(user.clone()),
            candidates: retrieved.candidates,
            user_embedding: retrieved.user_embedding,
            context: Some(context.clone()),
        };
        let ranked = self
            .timed(version, Stage::Ranking, deadline, backend.ranking.rank(Request::new(request)))
            .await?
            .into_inner();
        let started = Instant::now();
        let now_seconds = context.now_ms as f64 / 1000.0;
        let candidates = ranked
            .items
            .into_iter()
            .filter(|item| !excluded.contains(item.item_id.as_str()))
            .map(|item| rerank::Candidate {
                age_seconds: (item.published_at > 0).then_some(now_seconds - item.published_at as f64),
                category: (!item.category.is_empty()).then_some(item.category),
                embedding: (!item.embedding.is_empty()).then_some(item.embedding),
                item_id: item.item_id,
                score: item.score,
                source: item.source,
            })
            .collect();
        let rerank_settings = RerankSettings { page_size: query.page_size, ..settings.rerank.clone() };
        let page = rerank::rerank(candidates, &rerank_settings);
        self.observe_stage(version, "rerank", started);
        let page = page.map_err(StageError::Rerank)?;
        self.observe_page(version, &page);
        let items = page
            .items
            .into_iter()
            .map(|item| Item { item_id: item.item_id, score: item.score, source: item.source })
            .collect();
        Ok((items, user))
    }

    /// The per-version page monitors: where the items came from and how varied the page is.
    fn observe_page(&self, version: &str, page: &rerank::Page) {
        let metrics = &self.inner.metrics;
        let labels = self.version_labels(version);
        for item in &page.items {
            metrics.page_items.get_or_create(&SourceLabels::new(&labels, &item.source)).inc();
        }
        if let Some(distance) = page.diversity.intra_list {
            metrics.page_intra_list_diversity.get_or_create(&labels).observe(distance);
        }
        if let Some(bits) = page.diversity.category_entropy_bits {
            metrics.page_category_entropy.get_or_create(&labels).observe(bits);
        }
    }

    /// Runs one remote stage until `deadline`, observing its latency when it answers.
    async fn timed<T>(
        &self,
        version: &str,
        stage: Stage,
        deadline: Instant,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, StageError> {
        let started = Instant::now();
        let result = tokio::time::timeout_at(deadline.into(), call).await.map_err(|_| StageError::Late { stage })?;
        self.observe_stage(version, stage.name(), started);
        result.map_err(|status| StageError::Failed { stage, status })
    }

    fn observe_stage(&self, version: &str, stage: &'static str, started: Instant) {
        let labels =
            StageLabels { pipeline: self.inner.settings.pipeline.clone(), model_version: version.to_owned(), stage };
        self.inner.metrics.stage_latency.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    }

    /// Runs the flow on the shadow version in the background, if a permit is free; compares it
    /// with the served page (`None` when the served page was a fallback).
    fn mirror(
        &self,
        shadow: &str,
        snapshot: &Snapshot,
        query: RecommendQuery,
        user: Option<UserFeatures>,
        served: Option<Vec<String>>,
    ) {
        let labels = self.version_labels(shadow);
        let metrics = &self.inner.metrics;
        let Ok(permit) = self.inner.shadow_permits.clone().try_acquire_owned() else {
            metrics.shadow_dropped.get_or_create(&labels).inc();
            return;
        };
        let Some(backend) = snapshot.backends.resolve(shadow) else {
            // The snapshot was checked: every named version resolves.
            metrics.shadow_errors.get_or_create(&labels).inc();
            return;
        };
        let gateway = self.clone();
        let shadow = shadow.to_owned();
        tokio::spawn(async move {
            let _permit = permit;
            let metrics = &gateway.inner.metrics;
            metrics.shadow_requests.get_or_create(&labels).inc();
            let started = Instant::now();
            let deadline = started + gateway.inner.settings.shadow_timeout;
            let result = gateway.run(&backend, &query, &shadow, user, deadline).await;
            metrics.shadow_latency.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
            match result {
                Ok((items, _)) => {
                    if let Some(overlap) = served.and_then(|served| overlap_at_k(&served, &items, query.page_size)) {
                        metrics.shadow_overlap.get_or_create(&labels).observe(overlap);
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, shadow, "shadow request failed or ran late");
                    if !error.is_shared() {
                        metrics.shadow_errors.get_or_create(&labels).inc();
                    }
                }
            }
        });
    }

    /// The fallback page for `query`: the cached popular list, restricted to the requested
    /// content types.
    fn fallback_items(&self, query: &RecommendQuery) -> Vec<Item> {
        let list = self.inner.fallback.read().unwrap_or_else(PoisonError::into_inner).clone();
        let types = &query.context.content_types;
        list.iter()
            .filter(|item| types.is_empty() || types.contains(&item.category))
            .take(query.page_size)
            .map(|item| item.item.clone())
            .collect()
    }

    /// Refreshes the fallback list from the stable version's retrieval, asked for an anonymous
    /// cold user. Returns the number of items kept.
    pub async fn refresh_fallback(&self) -> Result<usize, FallbackError> {
        let snapshot = self.snapshot().ok_or(FallbackError::NotReady)?;
        let version = snapshot.stable_version().ok_or(FallbackError::NotReady)?;
        let backend =
            snapshot.backends.resolve(version).ok_or_else(|| FallbackError::Unresolved(version.to_owned()))?;
        let request = RetrieveRequest {
            user: Some(UserFeatures { user_id: FALLBACK_USER.to_owned(), known: false, ..Default::default() }),
            k: FALLBACK_ITEMS,
            context: Some(Context { now_ms: millis(unix_now()), ..Default::default() }),
            exclude_item_ids: Vec::new(),
        };
        let response = tokio::time::timeout(FALLBACK_TIMEOUT, backend.retrieval.retrieve(Request::new(request)))
            .await
            .map_err(|_| FallbackError::Timeout)?
            .map_err(FallbackError::Retrieval)?
            .into_inner();
        let mut seen = HashSet::new();
        let mut candidates: Vec<_> =
            response.candidates.into_iter().filter(|c| c.score.is_finite() && seen.insert(c.item_id.clone())).collect();
        candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
        let list: Vec<FallbackItem> = candidates
            .into_iter()
            .map(|c| FallbackItem {
                item: Item { item_id: c.item_id, score: c.score, source: c.source },
                category: c.category,
            })
            .collect();
        let kept = list.len();
        *self.inner.fallback.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(list);
        Ok(kept)
    }

    /// Verifies the token and that it covers the event (its user, an item of its page), skips an
    /// event already recorded, forwards a new one and waits until the events service made it
    /// durable; then drops the user's cached pages and counts a click for the token's version.
    pub async fn record_event(&self, input: EventInput) -> Result<Recorded, EventError> {
        let claims = self.verify_token(&input)?;
        let event_type = input.event_type.name().unwrap_or("unspecified");
        let labels =
            EventLabels { pipeline: claims.pipeline.clone(), model_version: claims.model_version.clone(), event_type };
        let key = reco_proto::event_key(&claims.request_id, &input.item_id, input.event_type);
        let claim = self.inner.dedup.claim(key).await.map_err(|error| {
            tracing::warn!(%error, "cannot tell whether an event is new; refusing it");
            EventError::DedupUnavailable(error.to_string())
        })?;
        if claim == Claim::Duplicate {
            self.inner.metrics.duplicate_events.get_or_create(&labels).inc();
            return Ok(Recorded::Duplicate);
        }
        let event = Event {
            user_id: input.user_id.clone(),
            item_id: input.item_id,
            r#type: input.event_type.into(),
            dwell_ms: input.dwell_ms,
            at_ms: millis(unix_now()),
            pipeline: claims.pipeline,
            model_version: claims.model_version.clone(),
            request_id: claims.request_id,
            // The events service derives the same key the dedup above used from the request id.
            event_id: String::new(),
        };
        if let Err(error) = self.forward(event).await {
            self.inner.dedup.release(key).await;
            return Err(error);
        }
        if let Some(cache) = &self.inner.cache {
            cache.invalidate_user(&input.user_id).await;
        }
        // A token from before any routing table loaded names no version: nothing to attribute.
        if input.event_type == EventType::Click && !claims.model_version.is_empty() {
            // The group the page was served in, even if the routing salt changed since.
            let labels = GroupLabels {
                pipeline: labels.pipeline.clone(),
                model_version: labels.model_version.clone(),
                user_group: claims.user_group,
            };
            self.inner.metrics.clicks.get_or_create(&labels).inc();
        }
        if input.dwell_ms > 0 && !claims.model_version.is_empty() {
            let version = self.version_labels(&claims.model_version);
            self.inner.metrics.dwell.get_or_create(&version).observe(f64::from(input.dwell_ms) / 1000.0);
        }
        self.inner.metrics.events.get_or_create(&labels).inc();
        Ok(Recorded::New)
    }

    /// Sends one event to the events service and waits until it is durable.
    async fn forward(&self, event: Event) -> Result<(), EventError> {
        let timeout = self.inner.settings.events_timeout;
        let request = Request::new(IngestRequest { events: vec![event] });
        let response = tokio::time::timeout(timeout, self.inner.events.ingest(request))
            .await
            .map_err(|_| EventError::Unavailable(format!("no answer within {timeout:?}")))?
            .map_err(|status| match status.code() {
                Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition | Code::OutOfRange => {
                    EventError::Refused(status.message().to_owned())
                }
                _ => EventError::Unavailable(status.message().to_owned()),
            })?
            .into_inner();
        if response.accepted < 1 {
            return Err(EventError::Unavailable("the events service accepted none of the events".to_owned()));
        }
        Ok(())
    }

    /// The claims of the event's token if it is valid and covers the event: a token attributes
    /// the events of the user it was served to, on the items of its page, and nothing else.
    fn verify_token(&self, input: &EventInput) -> Result<Claims, EventError> {
        let settings = &self.inner.settings;
        let verified = self.inner.signer.verify(&input.token, unix_now().as_secs(), settings.token_max_age);
        let (reason, error) = match verified {
            Ok(claims) if claims.pipeline != settings.pipeline => (
                "wrong_pipeline",
                EventError::Token(format!("token is for pipeline {:?}, not {:?}", claims.pipeline, settings.pipeline)),
            ),
            Ok(claims) if !claims.is_for_user(&input.user_id) => {
                let message = format!("the token was issued to another user than {:?}", input.user_id);
                ("wrong_user", EventError::NotCovered { reason: "wrong_user", message })
            }
            Ok(claims) if !claims.has_item(&input.item_id) => {
                let message = format!("item {:?} is not on the page the token was issued with", input.item_id);
                ("item_not_on_page", EventError::NotCovered { reason: "item_not_on_page", message })
            }
            Ok(claims) => return Ok(claims),
            Err(error) => (token_reject_reason(&error), EventError::Token(error.to_string())),
        };
        let labels = ReasonLabels { pipeline: settings.pipeline.clone(), reason };
        self.inner.metrics.token_rejects.get_or_create(&labels).inc();
        Err(error)
    }
}

/// The `reason` label of `reco_token_rejects_total`.
fn token_reject_reason(error: &TokenError) -> &'static str {
    match error {
        TokenError::TooLong { .. } => "too_long",
        TokenError::NotBase64 => "not_base64",
        TokenError::Truncated { .. } | TokenError::TrailingBytes { .. } | TokenError::BadUtf8 { .. } => "malformed",
        TokenError::UnknownVersion { .. } => "unknown_version",
        TokenError::BadSignature => "bad_signature",
        TokenError::Expired { .. } => "expired",
        TokenError::IssuedInFuture { .. } => "issued_in_future",
        TokenError::KeyTooShort { .. } | TokenError::ClaimsTooLarge { .. } => "internal",
    }
}

/// The user's group under `salt`: impressions and clicks carry the group the page was served in.
fn serving_group(salt: &str, user_id: &str) -> u16 {
    // Cannot saturate: there are USER_GROUPS (1,000) groups.
    u16::try_from(user_group(user_bucket(salt, user_id))).unwrap_or(u16::MAX)
}

/// Items never to recommend: the user's history and the items hidden in the session.
fn excluded_items(user: &UserFeatures) -> HashSet<&str> {
    let hidden = user.session.iter().filter(|event| event.r#type == i32::from(EventType::Hide));
    user.history.iter().map(String::as_str).chain(hidden.map(|event| event.item_id.as_str())).collect()
}

/// overlap@K: the share of the served top-K that the shadow's top-K also holds, with K the page
/// size capped by what was served; `None` when nothing was served.
fn overlap_at_k(served: &[String], shadow: &[Item], k: usize) -> Option<f64> {
    let k = k.min(served.len());
    if k == 0 {
        return None;
    }
    let shadow: HashSet<&str> = shadow.iter().take(k).map(|item| item.item_id.as_str()).collect();
    let common = served.iter().take(k).filter(|id| shadow.contains(id.as_str())).count();
    Some(common as f64 / k as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(ids: &[&str]) -> Vec<Item> {
        ids.iter().map(|id| Item { item_id: (*id).into(), score: 1.0, source: "t".into() }).collect()
    }

    #[test]
    fn overlap_table() {
        let served: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(overlap_at_k(&served, &items(&["d", "c", "b", "a"]), 4), Some(1.0));
        assert_eq!(overlap_at_k(&served, &items(&["a", "x", "y", "z"]), 4), Some(0.25));
        assert_eq!(overlap_at_k(&served, &items(&["a", "b"]), 2), Some(1.0));
        assert_eq!(overlap_at_k(&served, &items(&[]), 4), Some(0.0));
        assert_eq!(overlap_at_k(&served, &items(&["a"]), 20), Some(0.25));
        assert_eq!(overlap_at_k(&[], &items(&["a"]), 20), None);
    }

    #[test]
    fn history_and_hidden_items_are_excluded() {
        let user = UserFeatures {
            history: vec!["h1".into()],
            session: vec![
                reco_proto::SessionEvent {
                    item_id: "hidden".into(),
                    r#type: EventType::Hide.into(),
                    ..Default::default()
                },
                reco_proto::SessionEvent {
                    item_id: "liked".into(),
                    r#type: EventType::Like.into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(excluded_items(&user), HashSet::from(["h1", "hidden"]));
    }

    /// The worst case `respond` signs: the longest names, a 32-character request id and a full page.
    #[test]
    fn the_largest_page_fits_in_a_token() {
        let name = "n".repeat(crate::args::MAX_NAME_LEN);
        let claims = Claims {
            pipeline: name.clone(),
            model_version: name,
            request_id: format!("{:032x}", u128::MAX),
            issued_at: u64::MAX,
            user: UserDigest::of("u"),
            user_group: u16::MAX,
            items: (0..MAX_PAGE_SIZE).map(|i| ItemDigest::of(&i.to_string())).collect(),
        };
        let signer = TokenSigner::new(&[7; 32]).expect("key");
        let token = signer.sign(&claims).expect("the largest page fits");
        assert!(token.len() <= reco_core::token::MAX_TOKEN_LEN);
    }

    #[test]
    fn every_token_error_has_a_reason() {
        assert_eq!(token_reject_reason(&TokenError::BadSignature), "bad_signature");
        assert_eq!(token_reject_reason(&TokenError::Expired { issued_at: 0, now: 1, max_age_secs: 0 }), "expired");
        assert_eq!(token_reject_reason(&TokenError::Truncated { what: "x" }), "malformed");
    }
}
