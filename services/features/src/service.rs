//! The gRPC face: `Features` (reads) and `Events` (ingestion) on one service.
//!
//! Ingest order: validate the whole batch, append it to the training log (durable), apply it to
//! the store, answer. The answer therefore means "durable and visible to the next GetUser". If the
//! store fails after the log append, the request fails although the events are logged; a retry
//! then logs them twice (at-least-once), which training tolerates better than a lost event.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use reco_proto::events_server::Events;
use reco_proto::features_server::Features;
use reco_proto::{
    GetItemCountersRequest, GetItemCountersResponse, GetUserRequest, IngestRequest, IngestResponse, ItemCounters,
    UserFeatures,
};
use tonic::{Request, Response, Status};

use crate::metrics::{EventTypeLabel, Metrics, RejectLabel};
use crate::model::{SeedInteraction, SeedUser, to_proto_user};
use crate::sink::{EventSink, SinkError};
use crate::store::{FeatureStore, SeedOutcome, StoreError, seed_if_empty};
use crate::validate::{IngestContext, MAX_ITEM_IDS, Rejection, check_id, validate_batch};

/// Why an ingest request failed.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    Invalid(#[from] Rejection),
    #[error("events not accepted: {0}")]
    Sink(#[from] SinkError),
    #[error("events are durable in the log but the features were not updated: {0}")]
    Store(#[from] StoreError),
}

impl From<IngestError> for Status {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Invalid(_) => Status::invalid_argument(e.to_string()),
            IngestError::Sink(_) | IngestError::Store(_) => Status::unavailable(e.to_string()),
        }
    }
}

/// Feature reads and event ingestion for one pipeline. Cheap to clone (shared state), so one
/// value can back both gRPC servers and in-process callers.
#[derive(Clone)]
pub struct FeatureService {
    inner: Arc<Inner>,
}

struct Inner {
    pipeline: String,
    store: Arc<dyn FeatureStore>,
    sink: Arc<dyn EventSink>,
    catalog: RwLock<Option<Arc<HashSet<String>>>>,
    metrics: Metrics,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

fn store_status(e: StoreError) -> Status {
    Status::unavailable(format!("feature store: {e}"))
}

impl FeatureService {
    pub fn new(pipeline: &str, store: Arc<dyn FeatureStore>, sink: Arc<dyn EventSink>, metrics: Metrics) -> Self {
        Self {
            inner: Arc::new(Inner { pipeline: pipeline.to_owned(), store, sink, catalog: RwLock::new(None), metrics }),
        }
    }

    /// Restricts ingestion to these item ids (events naming others are rejected); call it once
    /// the model's catalog is known. Without a catalog any item id is accepted.
    pub fn set_catalog(&self, item_ids: HashSet<String>) {
        *self.inner.catalog.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(item_ids));
    }

    pub fn store(&self) -> &Arc<dyn FeatureStore> {
        &self.inner.store
    }

    /// Seeds users and historical interactions when the store is empty; see [`seed_if_empty`].
    pub async fn seed(&self, users: &[SeedUser], interactions: &[SeedInteraction]) -> Result<SeedOutcome, StoreError> {
        let started = Instant::now();
        let out = seed_if_empty(self.inner.store.as_ref(), users, interactions).await;
        self.inner.metrics.observe_store(self.inner.store.backend(), "seed", started);
        out
    }

    /// Validates, logs durably and applies a batch; returns the number accepted.
    pub async fn ingest(&self, events: &[reco_proto::Event]) -> Result<usize, IngestError> {
        let catalog = self.inner.catalog.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let ctx = IngestContext { pipeline: &self.inner.pipeline, catalog: catalog.as_deref(), now_ms: now_ms() };
        let valid = match validate_batch(events, &ctx) {
            Ok(v) => v,
            Err(rejection) => {
                let label = RejectLabel { field: rejection.field.to_owned() };
                self.inner.metrics.events_rejected.get_or_create(&label).inc_by(events.len() as u64);
                return Err(rejection.into());
            }
        };
        if valid.is_empty() {
            return Ok(0);
        }
        let (features, logged): (Vec<_>, Vec<_>) = valid.into_iter().unzip();
        self.inner.sink.append(&logged).await?;
        let started = Instant::now();
        let applied = self.inner.store.apply(&features).await;
        self.inner.metrics.observe_store(self.inner.store.backend(), "apply", started);
        applied?;
        for e in &features {
            let label = EventTypeLabel { event_type: e.kind.name().to_owned() };
            self.inner.metrics.events_ingested.get_or_create(&label).inc();
        }
        Ok(features.len())
    }
}

#[tonic::async_trait]
impl Features for FeatureService {
    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<UserFeatures>, Status> {
        let user_id = request.into_inner().user_id;
        check_id(&user_id, true).map_err(|r| Status::invalid_argument(format!("user_id: {r}")))?;
        let started = Instant::now();
        let user = self.inner.store.get_user(&user_id).await;
        self.inner.metrics.observe_store(self.inner.store.backend(), "get_user", started);
        Ok(Response::new(to_proto_user(&user_id, user.map_err(store_status)?)))
    }

    async fn get_item_counters(
        &self,
        request: Request<GetItemCountersRequest>,
    ) -> Result<Response<GetItemCountersResponse>, Status> {
        let ids = request.into_inner().item_ids;
        if ids.len() > MAX_ITEM_IDS {
            return Err(Status::invalid_argument(format!(
                "item_ids: {} ids, more than the limit of {MAX_ITEM_IDS}",
                ids.len()
            )));
        }
        for (i, id) in ids.iter().enumerate() {
            check_id(id, true).map_err(|r| Status::invalid_argument(format!("item_ids[{i}]: {r}")))?;
        }
        let started = Instant::now();
        let counters = self.inner.store.get_item_counters(&ids).await;
        self.inner.metrics.observe_store(self.inner.store.backend(), "get_item_counters", started);
        let items = ids
            .into_iter()
            .zip(counters.map_err(store_status)?)
            .map(|(item_id, c)| ItemCounters { item_id, counters: c.into_iter().collect() })
            .collect();
        Ok(Response::new(GetItemCountersResponse { items }))
    }
}

#[tonic::async_trait]
impl Events for FeatureService {
    async fn ingest(&self, request: Request<IngestRequest>) -> Result<Response<IngestResponse>, Status> {
        let accepted = FeatureService::ingest(self, &request.into_inner().events).await?;
        // validate_batch caps a batch at MAX_BATCH, far below u32::MAX.
        Ok(Response::new(IngestResponse { accepted: u32::try_from(accepted).unwrap_or(u32::MAX) }))
    }
}
