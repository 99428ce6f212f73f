//! The event log on Kafka (`--event-sink kafka`): the topic is the training log.
//!
//! - Appends go through an idempotent producer (`enable.idempotence`, `acks=all`), keyed by
//!   user id so that each user's events stay in order in one partition; `append` returns once
//!   the broker acknowledged every record, so an acknowledged event survives a broker restart
//!   and the producer's own retries never write it twice.
//! - The store's checkpoint records each partition's offset; at start the service replays the
//!   partitions from there (as with the file log), and after each checkpoint the covered offsets
//!   are committed in the pipeline's consumer group (`reco-features-<pipeline>`), so the group's
//!   lag says how far the features trail the topic and offsets are committed only after the
//!   features update is durable.
//! - With the embedded store one features replica writes a pipeline's topic. With Redis several
//!   may; they replay nothing (Redis persists each write itself), and each applies the partitions
//!   the consumer group gives it ([`crate::owner`]), committing as it applies.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tonic::async_trait;

use crate::sink::{
    AppendError, EventSink, LogEntries, LogEntry, LogPoint, LoggedEvent, Offsets, Partition, SinkError, raise_end,
};

/// How long metadata and offset requests may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a replay waits for the next record before giving up on a silent broker.
const READ_STALL: Duration = Duration::from_secs(30);

/// Where the topic is.
#[derive(Clone, Debug)]
pub struct KafkaTopic {
    pub brokers: String,
    pub topic: String,
    /// The consumer group offsets are committed in.
    pub group: String,
}

/// The event log as a Kafka topic.
pub struct KafkaSink {
    topic: KafkaTopic,
    producer: FutureProducer,
    /// How long one record may take to be acknowledged before the append fails (the client retries).
    delivery_timeout: Duration,
    /// Commits the offsets the features cover; never subscribes.
    committer: Arc<BaseConsumer>,
    ends: Mutex<Offsets>,
    closed: AtomicBool,
}

fn kafka(what: &str, topic: &KafkaTopic, e: impl std::fmt::Display) -> SinkError {
    SinkError::Kafka(format!("{what} topic {} on {}: {e}", topic.topic, topic.brokers))
}

fn consumer(topic: &KafkaTopic) -> Result<BaseConsumer, SinkError> {
    ClientConfig::new()
        .set("bootstrap.servers", &topic.brokers)
        .set("group.id", &topic.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(|e| kafka("consumer for", topic, e))
}

impl KafkaSink {
    /// Connects and reads the end of every partition. The topic must exist: its partition
    /// count is an operator's decision, not a side effect of the first event.
    pub async fn connect(topic: KafkaTopic, delivery_timeout: Duration) -> Result<Self, SinkError> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &topic.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", delivery_timeout.as_millis().to_string())
            .set("linger.ms", "1")
            .create()
            .map_err(|e| kafka("producer for", &topic, e))?;
        let committer = consumer(&topic)?;
        let blocking_topic = topic.clone();
        let (producer, committer, ends) = tokio::task::spawn_blocking(move || {
            let ends = watermarks(&committer, &blocking_topic)?;
            Ok::<_, SinkError>((producer, committer, ends))
        })
        .await
        .map_err(|e| kafka("connecting to", &topic, e))??;
        Ok(Self {
            topic,
            producer,
            delivery_timeout,
            committer: Arc::new(committer),
            ends: Mutex::new(ends),
            closed: AtomicBool::new(false),
        })
    }

    fn ends_lock(&self) -> std::sync::MutexGuard<'_, Offsets> {
        self.ends.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The high watermark (next offset) of every partition of the topic.
fn watermarks(client: &BaseConsumer, topic: &KafkaTopic) -> Result<Offsets, SinkError> {
    let metadata = client
        .fetch_metadata(Some(&topic.topic), REQUEST_TIMEOUT)
        .map_err(|e| kafka("reading metadata of", topic, e))?;
    let partitions: Vec<Partition> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic.topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(kafka("no", topic, "the topic does not exist (create it, partitioned for the features replicas)"));
    }
    partitions
        .into_iter()
        .map(|p| {
            let (_, high) = client
                .fetch_watermarks(&topic.topic, p, REQUEST_TIMEOUT)
                .map_err(|e| kafka("reading offsets of", topic, e))?;
            Ok((p, u64::try_from(high).unwrap_or(0)))
        })
        .collect()
}

#[async_trait]
impl EventSink for KafkaSink {
    async fn append(&self, events: &[LoggedEvent]) -> Result<Vec<LogPoint>, AppendError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SinkError::Closed.into());
        }
        let deadline = Instant::now() + self.delivery_timeout;
        let mut pending = Vec::with_capacity(events.len());
        let mut failed = None;
        for event in events {
            let payload = serde_json::to_vec(event).map_err(SinkError::from)?;
            let mut record = FutureRecord::to(&self.topic.topic).key(event.user_id.as_bytes()).payload(&payload);
            // Enqueue everything first so the records share round trips; wait if the queue is
            // full, but not past the delivery timeout.
            let queued = loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => break Ok(delivery),
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if Instant::now() < deadline =>
                    {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => break Err(kafka("producing to", &self.topic, e)),
                }
            };
            match queued {
                Ok(delivery) => pending.push(delivery),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        // Every queued record is waited for: those that landed are reported even on failure.
        let mut landed = Vec::with_capacity(pending.len());
        for delivery in pending {
            match delivery.await {
                Ok(Ok(d)) => {
                    landed.push(LogPoint { partition: d.partition, offset: u64::try_from(d.offset).unwrap_or(0) })
                }
                Ok(Err((e, _))) => failed = failed.or(Some(kafka("producing to", &self.topic, e))),
                Err(_) => failed = failed.or(Some(SinkError::Closed)),
            }
        }
        {
            let mut ends = self.ends_lock();
            for point in &landed {
                raise_end(&mut ends, point.partition, point.offset + 1);
            }
        }
        match failed {
            None => Ok(landed),
            Some(error) => Err(AppendError { landed, error }),
        }
    }

    fn ends(&self) -> Offsets {
        self.ends_lock().clone()
    }

    fn read(&self, from: &Offsets, to: &Offsets) -> Result<LogEntries, SinkError> {
        read(&self.topic, from, to)
    }

    async fn covered(&self, log: &Offsets) -> Result<(), SinkError> {
        let mut offsets = TopicPartitionList::new();
        for (p, offset) in log {
            let offset = Offset::Offset(i64::try_from(*offset).unwrap_or(i64::MAX));
            offsets
                .add_partition_offset(&self.topic.topic, *p, offset)
                .map_err(|e| kafka("committing", &self.topic, e))?;
        }
        self.committer.commit(&offsets, CommitMode::Sync).map_err(|e| kafka("committing offsets of", &self.topic, e))
    }

    async fn close(&self) -> Result<(), SinkError> {
        let (producer, topic, timeout) = (self.producer.clone(), self.topic.clone(), self.delivery_timeout);
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| kafka("flushing", &topic, e))?
            .map_err(|e| kafka("flushing", &self.topic, e))
    }
}

/// The records of every partition from `from` (absent: the start) up to `to`.
fn read(topic: &KafkaTopic, from: &Offsets, to: &Offsets) -> Result<LogEntries, SinkError> {
    let reader = consumer(topic)?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = Offsets::new();
    for (p, end) in to {
        let (low, _) = reader
            .fetch_watermarks(&topic.topic, *p, REQUEST_TIMEOUT)
            .map_err(|e| kafka("reading offsets of", topic, e))?;
        let low = u64::try_from(low).unwrap_or(0);
        let mut start = from.get(p).copied().unwrap_or(0);
        if start < low {
            // Retention deleted records never replayed: say so rather than wait for them.
            tracing::warn!(
                topic = topic.topic,
                partition = p,
                from = start,
                low,
                "records to replay were deleted by retention"
            );
            start = low;
        }
        if start < *end {
            let offset = Offset::Offset(i64::try_from(start).unwrap_or(i64::MAX));
            assignment.add_partition_offset(&topic.topic, *p, offset).map_err(|e| kafka("reading", topic, e))?;
            remaining.insert(*p, *end);
        }
    }
    reader.assign(&assignment).map_err(|e| kafka("reading", topic, e))?;
    Ok(Box::new(KafkaReader { reader, topic: topic.clone(), remaining }))
}

/// The whole topic as it is now (blocking): what `reco events export` reads.
pub fn read_topic(topic: &KafkaTopic) -> Result<LogEntries, SinkError> {
    let ends = watermarks(&consumer(topic)?, topic)?;
    read(topic, &Offsets::new(), &ends)
}

/// Reads assigned partitions until each reaches its end.
struct KafkaReader {
    reader: BaseConsumer,
    topic: KafkaTopic,
    /// The end of each partition not read to the end yet.
    remaining: Offsets,
}

impl Iterator for KafkaReader {
    type Item = Result<LogEntry, SinkError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut silent_since = Instant::now();
        while !self.remaining.is_empty() {
            let message = match self.reader.poll(Duration::from_millis(200)) {
                None if silent_since.elapsed() > READ_STALL => {
                    self.remaining.clear();
                    return Some(Err(kafka("no record for 30 s from", &self.topic, "the broker stalled mid-replay")));
                }
                None => continue,
                Some(Err(e)) => return Some(Err(kafka("reading", &self.topic, e))),
                Some(Ok(message)) => message,
            };
            silent_since = Instant::now();
            let (partition, offset) = (message.partition(), u64::try_from(message.offset()).unwrap_or(0));
            let Some(end) = self.remaining.get(&partition).copied() else { continue };
            if offset + 1 >= end {
                self.remaining.remove(&partition);
            }
            if offset >= end {
                continue;
            }
            return Some(Ok(match serde_json::from_slice(message.payload().unwrap_or_default()) {
                Ok(event) => LogEntry::Record { partition, offset, size: 1, event },
                Err(e) => {
                    tracing::warn!(topic = self.topic.topic, partition, offset, error = %e, "skipping a corrupt event record");
                    LogEntry::Corrupt { partition, offset, reason: e.to_string() }
                }
            }));
        }
        None
    }
}
