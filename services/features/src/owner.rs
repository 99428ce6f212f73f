//! Partition ownership (`--backend=redis --event-sink=kafka`), for several features replicas.
//!
//! Any replica takes an event: it produces it to the topic, keyed by user id, and answers once
//! the broker acknowledged it (durable). It does not apply it. Every replica is a member of the
//! pipeline's consumer group (`reco-features-<pipeline>`); the group gives each member a share
//! of the partitions, and a member applies to Redis the records of the partitions it owns, so
//! each user's events are applied by one replica, in log order. When a replica stops or dies,
//! the group hands its partitions to the others.
//!
//! Each partition's applied offset lives in Redis beside the features and moves in the same
//! atomic step as they do ([`RedisStore::apply_logged`]): a record read twice (a rebalance, a
//! restart from an older committed offset) is applied once, and an event logged twice (a
//! client's retry through another replica) too, by its id. The group's committed offsets follow,
//! so its lag says how far the features trail the topic.
//!
//! Read-your-writes: the replica that took an event waits (bounded) until its partition's owner
//! applied it before answering, so the next `GetUser` sees it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::kafka::KafkaTopic;
use crate::metrics::Metrics;
use crate::model::FeatureEvent;
use crate::redis::{LoggedRecord, RedisStore};
use crate::sink::{LogPoint, LoggedEvent, Offsets, Partition, SinkError, raise_end};

/// Records applied per step at most.
const BATCH: usize = 512;
/// How long the group waits for a silent member before giving its partitions to the others.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause between two tries of a failed apply.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How far this replica applied each partition it owns (or owned), for its own waiting writes.
pub type LocalApplied = watch::Sender<Offsets>;

/// The consumer applying this replica's partitions; [`PartitionOwner::stop`] leaves the group.
pub struct PartitionOwner {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    owned: Arc<Mutex<Vec<Partition>>>,
}

/// One record as read, decoded or not.
struct Record {
    partition: Partition,
    offset: u64,
    event: Result<LoggedEvent, String>,
}

impl Record {
    fn read(message: &BorrowedMessage<'_>) -> Self {
        Record {
            partition: message.partition(),
            offset: u64::try_from(message.offset()).unwrap_or(0),
            event: serde_json::from_slice(message.payload().unwrap_or_default()).map_err(|e| e.to_string()),
        }
    }
}

impl PartitionOwner {
    /// Joins the pipeline's consumer group on `topic` and applies the partitions it is given.
    pub fn start(
        topic: KafkaTopic,
        store: RedisStore,
        local: Arc<LocalApplied>,
        metrics: Metrics,
    ) -> Result<Self, SinkError> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &topic.brokers)
            .set("group.id", &topic.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", SESSION_TIMEOUT.as_millis().to_string())
            .set("heartbeat.interval.ms", "1000")
            // A record waits for its owner, and the replica that took it waits for that.
            .set("fetch.wait.max.ms", "5")
            .create()
            .map_err(|e| SinkError::Kafka(format!("consumer of topic {} on {}: {e}", topic.topic, topic.brokers)))?;
        consumer
            .subscribe(&[&topic.topic])
            .map_err(|e| SinkError::Kafka(format!("subscribing to topic {} on {}: {e}", topic.topic, topic.brokers)))?;
        let (stop, stopped) = watch::channel(false);
        let owned = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(run(consumer, topic, store, local, metrics, owned.clone(), stopped));
        Ok(Self { stop, task, owned })
    }

    /// The partitions this replica owns now.
    pub fn partitions(&self) -> Vec<Partition> {
        self.owned.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Finishes the step under way and leaves the group, so the others take the partitions now.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn run(
    consumer: StreamConsumer,
    topic: KafkaTopic,
    store: RedisStore,
    local: Arc<LocalApplied>,
    metrics: Metrics,
    owned: Arc<Mutex<Vec<Partition>>>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let first = tokio::select! {
            _ = stopped.changed() => break,
            next = tokio::time::timeout(Duration::from_millis(500), consumer.recv()) => next,
        };
        note_assignment(&consumer, &owned, &metrics);
        let first = match first {
            Err(_quiet) => continue,
            Ok(Err(e)) => {
                tracing::warn!(topic = topic.topic, error = %e, "reading the event topic");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Ok(Ok(message)) => Record::read(&message),
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match consumer.recv().now_or_never() {
                Some(Ok(message)) => batch.push(Record::read(&message)),
                _ => break,
            }
        }
        if !apply(&store, &batch, &metrics, &mut stopped).await {
            break;
        }
        let ends = ends(&batch);
        local.send_modify(|applied| {
            for (partition, end) in &ends {
                raise_end(applied, *partition, *end);
            }
        });
        commit(&consumer, &topic, ends);
    }
    consumer.unsubscribe();
    owned.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    metrics.partitions_owned.set(0);
}

fn note_assignment(consumer: &StreamConsumer, owned: &Mutex<Vec<Partition>>, metrics: &Metrics) {
    let Ok(assignment) = consumer.assignment() else { return };
    let mut partitions: Vec<Partition> = assignment.elements().iter().map(|e| e.partition()).collect();
    partitions.sort_unstable();
    metrics.partitions_owned.set(partitions.len() as i64);
    *owned.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = partitions;
}

/// Applies a batch partition by partition, retrying until it is applied (a Redis outage stalls
/// the partitions; nothing is skipped). False when asked to stop meanwhile.
async fn apply(store: &RedisStore, batch: &[Record], metrics: &Metrics, stopped: &mut watch::Receiver<bool>) -> bool {
    let mut partitions: Vec<Partition> = batch.iter().map(|r| r.partition).collect();
    partitions.sort_unstable();
    partitions.dedup();
    for partition in partitions {
        let features: Vec<(u64, FeatureEvent, Option<&str>)> = batch
            .iter()
            .filter(|r| r.partition == partition)
            .filter_map(|r| match &r.event {
                Ok(event) => Some((r.offset, event.feature(), event.event_id.as_deref())),
                Err(reason) => {
                    tracing::warn!(partition, offset = r.offset, reason, "skipping a corrupt event record");
                    metrics.event_log_corrupt_records.inc();
                    None
                }
            })
            .collect();
        let records: Vec<LoggedRecord<'_>> =
            features.iter().map(|(offset, event, id)| LoggedRecord { offset: *offset, event, id: *id }).collect();
        let mut backoff = Duration::from_millis(50);
        loop {
            let started = Instant::now();
            let result = store.apply_logged(partition, &records).await;
            metrics.observe_store("redis", "apply", started);
            match result {
                Ok(done) => {
                    metrics.events_applied.inc_by(done.applied);
                    metrics.events_duplicate.inc_by(done.duplicates);
                    break;
                }
                Err(e) => {
                    tracing::warn!(partition, error = %e, retry_in = ?backoff, "cannot apply events; retrying");
                    tokio::select! {
                        _ = stopped.changed() => return false,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
    true
}

/// Where each partition of the batch ends (the next offset).
fn ends(batch: &[Record]) -> Offsets {
    ends_of(batch.iter().map(|r| (r.partition, r.offset)))
}

fn ends_of(points: impl Iterator<Item = (Partition, u64)>) -> Offsets {
    let mut next = Offsets::new();
    for (partition, offset) in points {
        raise_end(&mut next, partition, offset + 1);
    }
    next
}

/// Commits the offsets after a batch, so the group's lag follows what is applied. A commit that fails
/// (the partition moved to another member meanwhile) is harmless: the applied offsets in Redis
/// decide what is applied.
fn commit(consumer: &StreamConsumer, topic: &KafkaTopic, next: Offsets) {
    let mut offsets = TopicPartitionList::new();
    for (partition, offset) in next {
        let offset = Offset::Offset(i64::try_from(offset).unwrap_or(i64::MAX));
        if offsets.add_partition_offset(&topic.topic, partition, offset).is_err() {
            return;
        }
    }
    if let Err(e) = consumer.commit(&offsets, CommitMode::Async) {
        tracing::debug!(topic = topic.topic, error = %e, "committing applied offsets");
    }
}

/// Waits, for the replica that took events, until their partitions' owners applied them: this
/// replica's own partitions are seen at once, the others' in Redis.
#[derive(Clone)]
pub struct AppliedWait {
    store: RedisStore,
    local: Arc<LocalApplied>,
    bound: Duration,
}

/// Longest pause between two looks at Redis for partitions another replica owns.
const MAX_POLL: Duration = Duration::from_millis(10);

impl AppliedWait {
    pub fn new(store: RedisStore, local: Arc<LocalApplied>, bound: Duration) -> Self {
        Self { store, local, bound }
    }

    /// True once every record of `points` is applied; false when `bound` passed first (the
    /// events are durable and will be applied; the next read may not show them yet).
    pub async fn wait(&self, points: &[LogPoint]) -> bool {
        let needed = ends_of(points.iter().map(|p| (p.partition, p.offset)));
        let reached = |applied: &Offsets, p: &Partition, end: &u64| applied.get(p).is_some_and(|a| a >= end);
        let deadline = tokio::time::Instant::now() + self.bound;
        let mut local = self.local.subscribe();
        let mut pause = Duration::from_millis(1);
        let mut next_poll = tokio::time::Instant::now();
        loop {
            let mut pending: Vec<Partition> = {
                let applied = local.borrow_and_update();
                needed.iter().filter(|(p, end)| !reached(&applied, p, end)).map(|(p, _)| *p).collect()
            };
            if !pending.is_empty() && tokio::time::Instant::now() >= next_poll {
                if let Ok(applied) = self.store.applied_offsets(&pending).await {
                    pending.retain(|p| !reached(&applied, p, &needed[p]));
                }
                next_poll = tokio::time::Instant::now() + pause;
                pause = (pause * 2).min(MAX_POLL);
            }
            if pending.is_empty() {
                return true;
            }
            let wake = next_poll.min(deadline);
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::select! {
                _ = local.changed() => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}
