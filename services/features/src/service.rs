//! The gRPC face: `Features` (reads) and `Events` (ingestion) on one service.
//!
//! Ingest order: validate the whole batch, set aside retries of events already applied
//! ([`crate::dedup`]), append the new ones to the training log (durable), apply them to the
//! store, answer. An answer therefore means "durable, applied once, and visible to the next
//! GetUser"; an error means "retry": the events may or may not be durable, and the retry is
//! applied once whatever happened to the first try. The write runs in its own task, so a
//! request cancelled mid-way (a client timeout) cannot leave a record half-handled.
//!
//! A record that reached the log but was not applied (the store failed after the append, or a
//! Kafka batch failed part-way) is remembered as *unapplied*: the retry is logged again and
//! applied, and a replay skips the first copy, so neither is lost nor counted twice. Training
//! (`reco events export`) counts each id once too.
//!
//! With Redis and Kafka ([`crate::owner`]) the owner of the record's partition applies it, once
//! by its offset and id; the replica that took it waits (bounded) for that before answering.
//!
//! Checkpoints: each write holds [`Inner::gate`] shared from its claim to its apply, and a
//! checkpoint takes it exclusively for the moment it captures the store's changes and the log's
//! end, so the capture holds exactly the events before that position (less the unapplied
//! records, which it lists). At start, [`FeatureService::recover`] replays the log from there.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use reco_proto::events_server::Events;
use reco_proto::features_server::Features;
use reco_proto::{
    GetItemCountersRequest, GetItemCountersResponse, GetUserRequest, IngestRequest, IngestResponse, ItemCounters,
    UserFeatures,
};
use reco_runtime::clock::unix_ms;
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

use crate::dedup::{Claim, EventId, RecentEvents, event_id, format_id, parse_id};
use crate::metrics::{EventTypeLabel, Metrics, RejectLabel};
use crate::model::{FeatureEvent, SeedInteraction, SeedUser, expire_session, to_proto_user};
use crate::owner::AppliedWait;
use crate::sink::{EventSink, LogEntry, LogPoint, LoggedEvent, Offsets, SinkError};
use crate::store::{FeatureStore, LogPosition, SeedOutcome, StoreError, seed_if_empty};
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
    #[error("an earlier copy of an event in this batch failed to be written; retry")]
    EarlierCopyFailed,
    #[error("the write task failed: {0}")]
    Task(String),
}

/// What an accepted batch came to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ingested {
    /// Every event of the batch: durable and applied, now or before.
    pub accepted: usize,
    /// Of those, retries of events already applied.
    pub duplicates: usize,
}

/// What [`FeatureService::recover`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Events applied from the log (logged after the last checkpoint).
    pub replayed: u64,
    /// Records of the log seen twice (a retry after a failed apply), applied once.
    pub duplicates: u64,
    /// Lines skipped as corrupt.
    pub corrupt: u64,
    /// Size of the records replayed (bytes of the file log, records of a Kafka topic).
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

impl From<IngestError> for Status {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Invalid(_) => Status::invalid_argument(e.to_string()),
            IngestError::Sink(_) | IngestError::Store(_) | IngestError::EarlierCopyFailed | IngestError::Task(_) => {
                Status::unavailable(e.to_string())
            }
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
    recent: Arc<RecentEvents>,
    /// Records logged but not applied, until a checkpoint's window no longer reaches them.
    unapplied: std::sync::Mutex<BTreeSet<LogPoint>>,
    /// Shared by each write from claim to apply; exclusive while a checkpoint captures.
    gate: tokio::sync::RwLock<()>,
    /// One checkpoint at a time.
    checkpointing: tokio::sync::Mutex<()>,
    /// Wakes the checkpoint loop early (the store's memory is full of unsaved changes).
    checkpoint_due: Notify,
    /// Set when the owners of the log's partitions apply events ([`crate::owner`]), not the
    /// replica that took them.
    owners: OnceLock<AppliedWait>,
}

/// What one write did.
struct Written {
    /// The new events, applied.
    features: Vec<FeatureEvent>,
    /// Copies being written by other requests.
    in_flight: Vec<crate::dedup::Outcome>,
    /// Retries of events already applied.
    duplicates: usize,
}

impl Inner {
    /// Claims the batch's ids, appends the new events and applies them, under the shared gate.
    async fn write(
        &self,
        valid: Vec<(FeatureEvent, LoggedEvent)>,
        ids: Vec<Option<EventId>>,
    ) -> Result<Written, IngestError> {
        let _shared = self.gate.read().await;
        let (claims, reservation) = self.recent.claim(&ids);
        let (mut features, mut logged, mut fresh_ids, mut in_flight, mut duplicates) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), 0);
        for ((claim, (feature, mut log)), id) in claims.into_iter().zip(valid).zip(&ids) {
            match claim {
                Claim::Fresh => {
                    log.event_id = id.map(format_id);
                    features.push(feature);
                    logged.push(log);
                    fresh_ids.push(*id);
                }
                Claim::Duplicate => duplicates += 1,
                Claim::InFlight(outcome) => in_flight.push(outcome),
            }
        }
        if logged.is_empty() {
            return Ok(Written { features, in_flight, duplicates });
        }
        let points = match self.sink.append(&logged).await {
            Ok(points) => points,
            Err(failed) => {
                self.remember_unapplied(&failed.landed);
                return Err(failed.error.into());
            }
        };
        if let Some(owners) = self.owners.get() {
            if !owners.wait(&points).await {
                self.metrics.apply_wait_timeouts.inc_by(points.len() as u64);
                tracing::debug!(records = points.len(), "acknowledged before their partition's owner applied them");
            }
        } else {
            let started = Instant::now();
            let applied = self.store.apply(&features).await;
            self.metrics.observe_store(self.store.backend(), "apply", started);
            if let Err(e) = applied {
                self.remember_unapplied(&points);
                return Err(e.into());
            }
        }
        let ids: Vec<_> = fresh_ids.into_iter().zip(points).filter_map(|(id, at)| Some((id?, at))).collect();
        reservation.applied(&ids);
        Ok(Written { features, in_flight, duplicates })
    }

    fn remember_unapplied(&self, points: &[LogPoint]) {
        if !points.is_empty() {
            tracing::warn!(records = points.len(), "events reached the log but were not applied; a replay skips them");
            self.unapplied.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(points.iter().copied());
        }
    }
}

fn store_status(e: StoreError) -> Status {
    Status::unavailable(format!("feature store: {e}"))
}

impl FeatureService {
    pub fn new(
        pipeline: &str,
        store: Arc<dyn FeatureStore>,
        sink: Arc<dyn EventSink>,
        recent: RecentEvents,
        metrics: Metrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                pipeline: pipeline.to_owned(),
                store,
                sink,
                catalog: RwLock::new(None),
                metrics,
                recent: Arc::new(recent),
                unapplied: std::sync::Mutex::new(BTreeSet::new()),
                gate: tokio::sync::RwLock::new(()),
                checkpointing: tokio::sync::Mutex::new(()),
                checkpoint_due: Notify::new(),
                owners: OnceLock::new(),
            }),
        }
    }

    /// Restricts ingestion to these item ids (events naming others are rejected); call it once
    /// the model's catalog is known. Without a catalog any item id is accepted.
    pub fn set_catalog(&self, item_ids: HashSet<String>) {
        *self.inner.catalog.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(item_ids));
    }

    /// Leaves applying events to the owners of their partitions ([`crate::owner`]): a write is
    /// logged, then waited for (up to the wait's bound) until applied. Call it once, before serving.
    pub fn apply_through_partition_owners(&self, wait: AppliedWait) {
        let _ = self.inner.owners.set(wait);
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

    /// Validates a batch, logs durably and applies its new events, and recognises retries.
    pub async fn ingest(&self, events: &[reco_proto::Event]) -> Result<Ingested, IngestError> {
        let catalog = self.inner.catalog.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let ctx = IngestContext { pipeline: &self.inner.pipeline, catalog: catalog.as_deref(), now_ms: unix_ms() };
        let valid = match validate_batch(events, &ctx) {
            Ok(v) => v,
            Err(rejection) => {
                let label = RejectLabel { field: rejection.field.to_owned() };
                self.inner.metrics.events_rejected.get_or_create(&label).inc_by(events.len() as u64);
                return Err(rejection.into());
            }
        };
        if valid.is_empty() {
            return Ok(Ingested::default());
        }
        let ids: Vec<Option<EventId>> = events.iter().map(event_id).collect();
        // Its own task: a cancelled request must not stop a write between append and apply.
        let inner = self.inner.clone();
        let written = tokio::spawn(async move { inner.write(valid, ids).await })
            .await
            .map_err(|e| IngestError::Task(e.to_string()))??;
        let Written { features, in_flight, mut duplicates } = written;
        if self.inner.store.wants_checkpoint() {
            self.inner.checkpoint_due.notify_one();
        }
        // A copy being written by another request counts as a retry once that write succeeds.
        for outcome in in_flight {
            if !crate::dedup::outcome(outcome).await {
                return Err(IngestError::EarlierCopyFailed);
            }
            duplicates += 1;
        }
        for e in &features {
            let label = EventTypeLabel { event_type: e.kind.name().to_owned() };
            self.inner.metrics.events_ingested.get_or_create(&label).inc();
        }
        self.inner.metrics.events_duplicate.inc_by(duplicates as u64);
        Ok(Ingested { accepted: events.len(), duplicates })
    }

    /// Saves the store's changes with the log position they cover (see the module doc). A
    /// no-op for backends that persist each write (Redis).
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.inner.checkpointing.lock().await;
        if self.inner.store.checkpointed().await?.is_none() {
            return Ok(());
        }
        let (capture, position) = {
            let _exclusive = self.inner.gate.write().await;
            let log = self.inner.sink.ends();
            (self.inner.store.capture(), self.position(log))
        };
        let log = position.log.clone();
        self.inner.store.save(capture, position).await?;
        if let Err(e) = self.inner.sink.covered(&log).await {
            tracing::warn!(error = %e, "cannot record the event log position the features cover");
        }
        Ok(())
    }

    /// The position of a checkpoint at `log`: the window of recent ids reaches back to its
    /// oldest record, and the unapplied records it still reaches are listed (the rest forgotten).
    fn position(&self, log: Offsets) -> LogPosition {
        let oldest = self.inner.recent.oldest_offsets();
        let window: Offsets = log.iter().map(|(p, end)| (*p, oldest.get(p).map_or(*end, |o| (*o).min(*end)))).collect();
        let mut unapplied = self.inner.unapplied.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        unapplied.retain(|at| window.get(&at.partition).is_none_or(|from| at.offset >= *from));
        LogPosition { log, window, unapplied: unapplied.iter().copied().collect() }
    }

    /// Resolves when the store asks for an early checkpoint.
    pub async fn checkpoint_due(&self) {
        self.inner.checkpoint_due.notified().await;
    }

    /// Brings the store up to the end of the event log: replays the events logged after its
    /// last checkpoint (applying each id once) and rebuilds the window of recent ids. Call it
    /// once, before serving.
    pub async fn recover(&self) -> Result<Recovery, RecoverError> {
        let mut recovery = Recovery::default();
        let Some(position) = self.inner.store.checkpointed().await? else { return Ok(recovery) };
        let ends = self.inner.sink.ends();
        let mut shorter = false;
        for (partition, offset) in &position.log {
            if ends.get(partition).is_none_or(|end| offset > end) {
                tracing::warn!(
                    partition,
                    checkpoint = offset,
                    end = ends.get(partition),
                    "the event log is shorter than the store's checkpoint (replaced or truncated?); checkpointing at its end"
                );
                shorter = true;
            }
        }
        let start = |p: &i32| position.log.get(p).copied().unwrap_or(0);
        let skipped: BTreeSet<LogPoint> = position.unapplied.iter().copied().collect();
        self.inner.unapplied.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(skipped.iter().copied());
        // Where the replay stands: everything before is in the store.
        let mut cursor: Offsets = ends.keys().map(|p| (*p, start(p))).collect();
        let from: Offsets =
            ends.keys().map(|p| (*p, position.window.get(p).copied().unwrap_or(start(p)).min(start(p)))).collect();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<LogEntry>, SinkError>>(4);
        let entries = self.inner.sink.read(&from, &ends)?;
        let reader = tokio::task::spawn_blocking(move || {
            let mut entries = entries;
            loop {
                let batch: Result<Vec<_>, _> = entries.by_ref().take(REPLAY_BATCH).collect();
                let done = batch.as_ref().map_or(true, Vec::is_empty);
                if tx.blocking_send(batch).is_err() || done {
                    return;
                }
            }
        });
        let started = Instant::now();
        while let Some(batch) = rx.recv().await {
            let batch = batch?;
            let mut features = Vec::with_capacity(batch.len());
            for entry in batch {
                match entry {
                    LogEntry::Record { partition, offset, size, event } => {
                        let at = LogPoint { partition, offset };
                        if skipped.contains(&at) {
                            continue;
                        }
                        let id = event.event_id.as_deref().and_then(parse_id);
                        let fresh = id.is_none_or(|id| self.inner.recent.replayed(id, at));
                        if offset >= start(&partition) {
                            cursor.insert(partition, offset + size);
                            recovery.bytes += size;
                            if fresh {
                                features.push(event.feature());
                            } else {
                                recovery.duplicates += 1;
                            }
                        }
                    }
                    LogEntry::Corrupt { partition, offset, .. } if offset >= start(&partition) => {
                        // The next record's offset moves the cursor past it.
                        recovery.corrupt += 1;
                        self.inner.metrics.event_log_corrupt_records.inc();
                    }
                    LogEntry::Corrupt { .. } => {}
                }
            }
            recovery.replayed += features.len() as u64;
            self.inner.store.apply(&features).await?;
            if self.inner.store.wants_checkpoint() {
                // A long replay must not hold every replayed user in memory: save as it goes.
                let capture = self.inner.store.capture();
                self.inner.store.save(capture, self.position(cursor.clone())).await?;
            }
        }
        let _ = reader.await;
        if shorter {
            // New records must not land below the old checkpoint, where a replay would skip them.
            self.checkpoint().await?;
        }
        self.inner.metrics.events_replayed.inc_by(recovery.replayed);
        if recovery.replayed + recovery.duplicates + recovery.corrupt > 0 {
            tracing::info!(
                from = ?position.log, replayed = recovery.replayed, duplicates = recovery.duplicates,
                corrupt = recovery.corrupt, seconds = started.elapsed().as_secs_f64(),
                "replayed the event log after the last checkpoint"
            );
        }
        Ok(recovery)
    }
}

/// Log entries read per step of a replay.
const REPLAY_BATCH: usize = 4096;

#[tonic::async_trait]
impl Features for FeatureService {
    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<UserFeatures>, Status> {
        let user_id = request.into_inner().user_id;
        check_id(&user_id, true).map_err(|r| Status::invalid_argument(format!("user_id: {r}")))?;
        let started = Instant::now();
        let user = self.inner.store.get_user(&user_id).await;
        self.inner.metrics.observe_store(self.inner.store.backend(), "get_user", started);
        let mut user = user.map_err(store_status)?;
        if let Some(user) = &mut user {
            expire_session(user, unix_ms(), self.inner.store.limits().session_ttl);
        }
        Ok(Response::new(to_proto_user(&user_id, user)))
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
        let ingested = FeatureService::ingest(self, &request.into_inner().events).await?;
        // validate_batch caps a batch at MAX_BATCH, far below u32::MAX.
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Ok(Response::new(IngestResponse { accepted: count(ingested.accepted), duplicates: count(ingested.duplicates) }))
    }
}
