//! reco-features: the online feature store and event ingestion of reco's serving path.
//!
//! - [`store::FeatureStore`]: user features (demographics, long-term history, session, counters)
//!   and item engagement counters, with an [`embedded::EmbeddedStore`] (a bounded in-memory
//!   cache over a redb file, checkpointed with its event-log position) and a
//!   [`redis::RedisStore`] backend.
//! - [`sink::EventSink`]: the training log; [`sink::FileSink`] appends JSON lines with group commit,
//!   [`kafka::KafkaSink`] produces to a Kafka topic (idempotent, `acks=all`).
//! - [`service::FeatureService`]: implements the `Features` and `Events` gRPC services. An
//!   acknowledged event is durable in the log, applied once ([`dedup`]) and visible to the very
//!   next `GetUser`; after a crash the log is replayed from the store's last checkpoint.
//! - [`owner`]: with Redis and Kafka, several replicas split the topic's partitions through the
//!   consumer group and each applies its own, once by offset and event id.
//! - [`export`]: the log as the trainer's input (`reco events export`).
//! - [`serve`]: the `reco serve features` flags, [`serve::build`] and [`serve::grpc_routes`].
//!
//! Seeding ([`service::FeatureService::seed`]) loads a dataset's users only into an EMPTY store:
//! a reloaded snapshot (or a populated Redis) wins, so restarts keep live features.

pub mod dedup;
pub mod embedded;
pub mod export;
pub mod kafka;
pub mod metrics;
pub mod model;
pub mod owner;
pub mod redis;
pub mod serve;
pub mod service;
pub mod sink;
pub mod store;
pub mod validate;

pub use embedded::EmbeddedStore;
pub use metrics::Metrics;
pub use model::{Demographics, Limits, SeedInteraction, SeedUser, UserState};
pub use redis::RedisStore;
pub use serve::{Backend, EventSinkKind, FeaturesArgs, ServiceHandle, build, grpc_routes};
pub use service::{FeatureService, Ingested, Recovery};
pub use sink::{EventSink, FileSink, LogEntry, LogReader, LoggedEvent, read_log};
pub use store::{FeatureStore, LogPosition, SeedOutcome, seed_if_empty};
