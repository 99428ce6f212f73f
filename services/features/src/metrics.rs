//! Prometheus metrics of the feature service, registered under the `reco_features_` prefix.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use reco_runtime::buckets::latency_histogram;

use crate::embedded::StoreMetrics;
use crate::sink::SinkMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventTypeLabel {
    pub event_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabel {
    /// The field of the first problem (`user_id`, `type`, ...; `events` for the batch itself).
    pub field: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreOpLabel {
    pub backend: String,
    pub op: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Handles to every metric; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    pub events_ingested: Family<EventTypeLabel, Counter>,
    pub events_rejected: Family<RejectLabel, Counter>,
    pub fsync_batch_records: Histogram,
    pub fsync_seconds: Histogram,
    pub store_op_seconds: HistogramFamily<StoreOpLabel>,
    pub checkpoint_seconds: Histogram,
    pub events_duplicate: Counter,
    pub events_replayed: Counter,
    pub event_log_corrupt_records: Counter,
    pub users_in_memory: Gauge,
    pub user_evictions: Counter,
    pub partitions_owned: Gauge,
    pub events_applied: Counter,
    pub apply_wait_timeouts: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_prefix("reco_features");
        let m = Self {
            events_ingested: Family::default(),
            events_rejected: Family::default(),
            fsync_batch_records: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            fsync_seconds: latency_histogram(),
            store_op_seconds: Family::new_with_constructor(latency_histogram),
            checkpoint_seconds: latency_histogram(),
            events_duplicate: Counter::default(),
            events_replayed: Counter::default(),
            event_log_corrupt_records: Counter::default(),
            users_in_memory: Gauge::default(),
            user_evictions: Counter::default(),
            partitions_owned: Gauge::default(),
            events_applied: Counter::default(),
            apply_wait_timeouts: Counter::default(),
        };
        registry.register(
            "events_ingested",
            "Events accepted, durable and applied, by type",
            m.events_ingested.clone(),
        );
        registry.register(
            "events_rejected",
            "Events in rejected ingest requests, by the field of the first problem",
            m.events_rejected.clone(),
        );
        registry.register(
            "event_log_fsync_batch_records",
            "Events made durable by one fsync of the event log (group commit)",
            m.fsync_batch_records.clone(),
        );
        registry.register(
            "event_log_fsync_duration_seconds",
            "Write + fsync time of one event log batch",
            m.fsync_seconds.clone(),
        );
        registry.register(
            "store_operation_duration_seconds",
            "Feature store operation latency by backend and operation",
            m.store_op_seconds.clone(),
        );
        registry.register(
            "checkpoint_duration_seconds",
            "Time to save one checkpoint of the embedded store (changed records and log position)",
            m.checkpoint_seconds.clone(),
        );
        registry.register(
            "events_duplicate",
            "Retried events acknowledged again without being logged or applied twice",
            m.events_duplicate.clone(),
        );
        registry.register(
            "events_replayed",
            "Events re-applied from the event log at start (logged after the last checkpoint)",
            m.events_replayed.clone(),
        );
        registry.register(
            "event_log_corrupt_records",
            "Event log lines skipped because they are not records (each logged with its offset)",
            m.event_log_corrupt_records.clone(),
        );
        registry.register("users_in_memory", "Users held in memory by the embedded store", m.users_in_memory.clone());
        registry.register(
            "user_evictions",
            "Users dropped from memory by the embedded store (saved; read back when next used)",
            m.user_evictions.clone(),
        );
        registry.register(
            "partitions_owned",
            "Event topic partitions this replica applies (Redis with Kafka: the consumer group's share)",
            m.partitions_owned.clone(),
        );
        registry.register(
            "events_applied",
            "Events applied to Redis by this replica as the owner of their partition",
            m.events_applied.clone(),
        );
        registry.register(
            "apply_wait_timeouts",
            "Acknowledged events whose partition owner had not applied them when the wait bound passed",
            m.apply_wait_timeouts.clone(),
        );
        m
    }

    /// The metrics the embedded store records into.
    pub fn store(&self) -> StoreMetrics {
        StoreMetrics {
            checkpoint_seconds: Some(self.checkpoint_seconds.clone()),
            users_in_memory: self.users_in_memory.clone(),
            user_evictions: self.user_evictions.clone(),
        }
    }

    /// The histograms the file sink's writer records into.
    pub fn sink(&self) -> SinkMetrics {
        SinkMetrics {
            batch_size: Some(self.fsync_batch_records.clone()),
            fsync_seconds: Some(self.fsync_seconds.clone()),
        }
    }

    pub(crate) fn observe_store(&self, backend: &str, op: &str, started: Instant) {
        self.store_op_seconds
            .get_or_create(&StoreOpLabel { backend: backend.to_owned(), op: op.to_owned() })
            .observe(started.elapsed().as_secs_f64());
    }
}
