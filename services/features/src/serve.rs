//! `reco serve features`: the flags, building the service from them, and serving gRPC.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reco_proto::events_server::EventsServer;
use reco_proto::features_server::FeaturesServer;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::dedup::RecentEvents;
use crate::embedded::EmbeddedStore;
use crate::kafka::{KafkaSink, KafkaTopic};
use crate::metrics::Metrics;
use crate::model::{DEFAULT_HISTORY_LEN, Limits};
use crate::owner::{AppliedWait, PartitionOwner};
use crate::redis::RedisStore;
use crate::service::{FeatureService, RecoverError};
use crate::sink::{EventSink, FileSink, Offsets, SinkError};
use crate::store::{FeatureStore, StoreError};

/// Flags of `reco serve features`; the operator passes `--pipeline --http --grpc --backend
/// --event-sink --data-dir` and, when set, `--redis-url --kafka-brokers --kafka-topic`.
#[derive(clap::Args, Clone, Debug)]
pub struct FeaturesArgs {
    /// The RecommenderPipeline this service belongs to (namespaces Redis keys and files).
    #[arg(long)]
    pub pipeline: String,
    /// Address of the HTTP server (/metrics, /healthz, /readyz).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub http: SocketAddr,
    /// Address of the gRPC server (Features, Events).
    #[arg(long, default_value = "0.0.0.0:50051")]
    pub grpc: SocketAddr,
    /// Where online features live.
    #[arg(long, value_enum, default_value_t = Backend::Embedded)]
    pub backend: Backend,
    /// Where accepted events are logged for training.
    #[arg(long, value_enum, default_value_t = EventSinkKind::Embedded)]
    pub event_sink: EventSinkKind,
    /// Directory of the embedded snapshot and the event log (`<data-dir>/<pipeline>/`).
    #[arg(long, default_value = "/var/lib/reco")]
    pub data_dir: PathBuf,
    /// Redis address for `--backend=redis`, e.g. `redis://redis.reco.svc:6379`.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Kafka bootstrap servers for `--event-sink=kafka`, e.g. `kafka-0.kafka:9092,kafka-1.kafka:9092`.
    #[arg(long)]
    pub kafka_brokers: Option<String>,
    /// Kafka topic for `--event-sink=kafka`: the training log, keyed by user id. It must exist.
    #[arg(long)]
    pub kafka_topic: Option<String>,
    /// Seconds an event may take to be acknowledged by every in-sync replica before the
    /// ingest answers 503 (not durable; the client retries). Kafka's `delivery.timeout.ms`.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub kafka_delivery_timeout_seconds: u64,
    /// Seconds between checkpoints of the embedded store (0: only at shutdown and when memory
    /// fills with unsaved changes). Events after the last checkpoint are replayed from the log
    /// at start, so this bounds the replay, not what survives a crash.
    #[arg(long, default_value_t = 60)]
    pub checkpoint_interval_seconds: u64,
    /// Session events kept per user.
    #[arg(long, default_value_t = crate::model::DEFAULT_SESSION_LEN, value_parser = session_len_parser())]
    pub session_len: usize,
    /// Session events older than this no longer count (and Redis expires idle sessions).
    #[arg(long, default_value_t = crate::model::DEFAULT_SESSION_TTL.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub session_ttl_seconds: u64,
    /// Redis drops the features of a user or item after this many days without an event.
    #[arg(long, default_value_t = 180, value_parser = clap::value_parser!(u64).range(1..=3650))]
    pub state_ttl_days: u64,
    /// Most users the embedded store keeps in memory; the least recently used beyond that are
    /// read back from its file when next needed.
    #[arg(long, default_value_t = crate::embedded::DEFAULT_MAX_USERS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_users_in_memory: usize,
    /// How long a retried event is recognised (applied once, acknowledged again).
    #[arg(long, default_value_t = 600)]
    pub dedup_window_seconds: u64,
    /// Most event ids remembered for recognising retries (about 50 bytes each).
    #[arg(long, default_value_t = 1_000_000)]
    pub dedup_capacity: usize,
    /// With `--backend=redis --event-sink=kafka` the owner of an event's partition applies it:
    /// how long the replica that took it waits for that before answering (the event is durable
    /// either way; the wait makes the next read show it). 0: do not wait.
    #[arg(long, default_value_t = 2000)]
    pub apply_wait_ms: u64,
}

fn session_len_parser() -> impl clap::builder::TypedValueParser<Value = usize> {
    use clap::builder::TypedValueParser;
    clap::value_parser!(u16).range(1..=1000).map(usize::from)
}

/// `--backend`; the names are the lowercased `FeatureBackend` variants of the CRD.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Redis,
}

/// `--event-sink`; the names are the lowercased `EventSink` variants of the CRD (`file` is
/// accepted for the embedded log too).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventSinkKind {
    #[value(alias = "file")]
    Embedded,
    Kafka,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("--event-sink=kafka needs --kafka-brokers and --kafka-topic")]
    MissingKafka,
    #[error("--backend=redis needs --redis-url")]
    MissingRedisUrl,
    #[error("--pipeline {0:?} is not a valid pipeline name (lowercase letters, digits, '-', '.'; at most 253)")]
    InvalidPipeline(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("replaying the event log: {0}")]
    Recover(#[from] RecoverError),
}

#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    #[error("closing the event log: {0}")]
    Sink(#[from] SinkError),
    #[error("final checkpoint: {0}")]
    Store(#[from] StoreError),
}

/// Owns the background work of a built service; [`ServiceHandle::shutdown`] ends it cleanly.
pub struct ServiceHandle {
    service: FeatureService,
    sink: Arc<dyn EventSink>,
    stop: watch::Sender<bool>,
    checkpoints: Option<JoinHandle<()>>,
    owner: Option<PartitionOwner>,
}

impl ServiceHandle {
    /// Stops periodic checkpoints, closes the event log (finishing pending appends) and takes a
    /// final checkpoint. Call it after the servers stopped taking requests.
    pub async fn shutdown(mut self) -> Result<(), ShutdownError> {
        let _ = self.stop.send(true);
        if let Some(task) = self.checkpoints.take() {
            let _ = task.await;
        }
        let closed = self.sink.close().await;
        self.service.checkpoint().await?;
        if let Some(owner) = self.owner.take() {
            owner.stop().await;
        }
        Ok(closed?)
    }

    /// The event log partitions this replica applies (Redis with Kafka; empty otherwise).
    pub fn owned_partitions(&self) -> Vec<crate::sink::Partition> {
        self.owner.as_ref().map(PartitionOwner::partitions).unwrap_or_default()
    }
}

/// A Kubernetes object name, so it is safe as a directory and a Redis key part.
fn valid_pipeline(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// Builds the service from its flags: opens the store and the event log, replays the events
/// logged after the store's last checkpoint, and starts periodic checkpoints.
pub async fn build(args: &FeaturesArgs, metrics: &Metrics) -> Result<(FeatureService, ServiceHandle), BuildError> {
    if !valid_pipeline(&args.pipeline) {
        return Err(BuildError::InvalidPipeline(args.pipeline.clone()));
    }
    let limits = Limits {
        history_len: DEFAULT_HISTORY_LEN,
        session_len: args.session_len,
        session_ttl: Duration::from_secs(args.session_ttl_seconds),
        state_ttl: Duration::from_secs(args.state_ttl_days * 24 * 60 * 60),
    };
    let dir = args.data_dir.join(&args.pipeline);
    if dir.join("features-snapshot.json").exists() {
        // The first release's snapshot had no log position, so it cannot be combined with the
        // log: the store is rebuilt from the whole event log instead.
        tracing::warn!(dir = %dir.display(), "features-snapshot.json of an earlier version is not read (delete it); replaying the event log");
    }
    let mut redis_store = None;
    let store: Arc<dyn FeatureStore> = match args.backend {
        Backend::Embedded => Arc::new(
            EmbeddedStore::open(limits, &dir.join("features.redb"), args.max_users_in_memory, metrics.store()).await?,
        ),
        Backend::Redis => {
            let url = args.redis_url.as_deref().ok_or(BuildError::MissingRedisUrl)?;
            let redis = RedisStore::connect(url, &args.pipeline, limits)
                .await?
                .with_id_ttl(Duration::from_secs(args.dedup_window_seconds));
            redis_store = Some(redis.clone());
            Arc::new(redis)
        }
    };
    let (sink, kafka_topic) = open_sink(args, &dir, metrics).await?;
    let recent = RecentEvents::new(Duration::from_secs(args.dedup_window_seconds), args.dedup_capacity);
    let service = FeatureService::new(&args.pipeline, store, sink.clone(), recent, metrics.clone());
    service.recover().await?;
    // Several replicas can share Redis; with Kafka each applies the partitions it owns.
    let owner = match (redis_store, kafka_topic) {
        (Some(redis), Some(topic)) => {
            let local = Arc::new(watch::channel(Offsets::new()).0);
            let bound = Duration::from_millis(args.apply_wait_ms);
            service.apply_through_partition_owners(AppliedWait::new(redis.clone(), local.clone(), bound));
            Some(PartitionOwner::start(topic, redis, local, metrics.clone())?)
        }
        _ => None,
    };
    let (stop, stopped) = watch::channel(false);
    let every = (args.checkpoint_interval_seconds > 0).then(|| Duration::from_secs(args.checkpoint_interval_seconds));
    let checkpoints =
        (args.backend == Backend::Embedded).then(|| tokio::spawn(checkpoint_loop(service.clone(), every, stopped)));
    Ok((service.clone(), ServiceHandle { service, sink, stop, checkpoints, owner }))
}

/// The event log of `--event-sink`, and its topic when it is Kafka.
async fn open_sink(
    args: &FeaturesArgs,
    dir: &std::path::Path,
    metrics: &Metrics,
) -> Result<(Arc<dyn EventSink>, Option<KafkaTopic>), BuildError> {
    match args.event_sink {
        EventSinkKind::Embedded => {
            let log = dir.join("events.jsonl");
            let sink_metrics = metrics.sink();
            let opened = log.clone();
            let sink = tokio::task::spawn_blocking(move || FileSink::open(&opened, sink_metrics))
                .await
                .map_err(|e| SinkError::Write { path: log.clone(), reason: format!("opening task failed: {e}") })??;
            Ok((Arc::new(sink), None))
        }
        EventSinkKind::Kafka => {
            let (Some(brokers), Some(topic)) = (&args.kafka_brokers, &args.kafka_topic) else {
                return Err(BuildError::MissingKafka);
            };
            let group = format!("reco-features-{}", args.pipeline);
            let topic = KafkaTopic { brokers: brokers.clone(), topic: topic.clone(), group };
            let delivery_timeout = Duration::from_secs(args.kafka_delivery_timeout_seconds);
            let sink = KafkaSink::connect(topic.clone(), delivery_timeout).await?;
            Ok((Arc::new(sink), Some(topic)))
        }
    }
}

/// Checkpoints every `every` (if set) and whenever the store asks for one.
async fn checkpoint_loop(service: FeatureService, every: Option<Duration>, mut stopped: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(every.unwrap_or(Duration::MAX / 4));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is immediate; the store was just opened
    loop {
        tokio::select! {
            _ = ticks.tick(), if every.is_some() => {}
            () = service.checkpoint_due() => {}
            _ = stopped.changed() => return,
        }
        if let Err(e) = service.checkpoint().await {
            tracing::warn!(error = %e, "checkpoint of the feature store failed; will retry");
        }
    }
}

/// The gRPC services (`Features` and `Events`) to serve with `reco_proto::serve`.
pub fn grpc_routes(service: FeatureService) -> tonic::service::Routes {
    tonic::service::Routes::new(FeaturesServer::new(service.clone())).add_service(EventsServer::new(service))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: FeaturesArgs,
    }

    /// Exactly the flags `features_statefulset` in the operator passes.
    fn operator_flags(backend: &str, sink: &str) -> Vec<String> {
        [
            "reco-serve-features",
            "--pipeline=explore",
            "--http=0.0.0.0:8080",
            "--grpc=0.0.0.0:50051",
            &format!("--backend={backend}"),
            &format!("--event-sink={sink}"),
            "--data-dir=/var/lib/reco",
            "--redis-url=redis://redis.reco.svc:6379",
            "--kafka-brokers=k1:9092,k2:9092",
            "--kafka-topic=events",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    #[test]
    fn accepts_the_operators_flags() {
        let a = Cli::try_parse_from(operator_flags("redis", "embedded")).unwrap().args;
        assert_eq!((a.backend, a.event_sink), (Backend::Redis, EventSinkKind::Embedded));
        assert_eq!(a.grpc.port(), 50051);
        assert_eq!(a.session_len, 20);
        assert_eq!(a.checkpoint_interval_seconds, 60);
        let a = Cli::try_parse_from(operator_flags("embedded", "kafka")).unwrap().args;
        assert_eq!((a.backend, a.event_sink), (Backend::Embedded, EventSinkKind::Kafka));
        let a = Cli::try_parse_from(operator_flags("embedded", "file")).unwrap().args;
        assert_eq!(a.event_sink, EventSinkKind::Embedded);
        assert!(Cli::try_parse_from(operator_flags("memcached", "embedded")).is_err());
        let mut zero = operator_flags("embedded", "embedded");
        zero.push("--session-len=0".into());
        assert!(Cli::try_parse_from(zero).is_err());
        assert_eq!(
            Cli::try_parse_from(operator_flags("embedded", "kafka")).unwrap().args.kafka_delivery_timeout_seconds,
            10
        );
        for bad in ["0", "301", "ten"] {
            let mut flags = operator_flags("embedded", "kafka");
            flags.push(format!("--kafka-delivery-timeout-seconds={bad}"));
            let Err(error) = Cli::try_parse_from(flags).map(|cli| cli.args.kafka_delivery_timeout_seconds) else {
                panic!("--kafka-delivery-timeout-seconds={bad} accepted");
            };
            let error = error.to_string();
            assert!(error.contains("--kafka-delivery-timeout-seconds"), "{bad}: {error}");
        }
    }

    fn args(dir: &std::path::Path, extra: &[&str]) -> FeaturesArgs {
        let mut flags = vec!["x".to_owned(), "--pipeline=explore".into(), format!("--data-dir={}", dir.display())];
        flags.extend(extra.iter().map(|s| (*s).to_owned()));
        Cli::try_parse_from(flags).unwrap().args
    }

    #[tokio::test]
    async fn missing_or_unreachable_backends_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::register(&mut Default::default());
        let err = build(&args(dir.path(), &["--event-sink=kafka"]), &metrics).await.err().unwrap();
        assert!(matches!(err, BuildError::MissingKafka), "{err}");
        let err = build(&args(dir.path(), &["--backend=redis"]), &metrics).await.err().unwrap();
        assert!(matches!(err, BuildError::MissingRedisUrl), "{err}");
        let mut escaping = args(dir.path(), &[]);
        escaping.pipeline = "../etc".into();
        let err = build(&escaping, &metrics).await.err().unwrap();
        assert!(matches!(err, BuildError::InvalidPipeline(_)), "{err}");
    }

    fn like(user: &str, item: &str, request_id: &str) -> reco_proto::Event {
        reco_proto::Event {
            user_id: user.into(),
            item_id: item.into(),
            r#type: reco_proto::EventType::Like as i32,
            request_id: request_id.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn shutdown_checkpoints_and_a_restart_reloads_instead_of_reseeding() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::register(&mut Default::default());
        let a = args(dir.path(), &["--checkpoint-interval-seconds=0"]);
        let (service, handle) = build(&a, &metrics).await.unwrap();
        let users = [crate::model::SeedUser { user_id: "7".into(), demographics: Default::default() }];
        assert_eq!(service.seed(&users, &[]).await.unwrap(), crate::store::SeedOutcome::Seeded { users: 1 });
        assert_eq!(service.ingest(&[like("7", "i1", "r1")]).await.unwrap().accepted, 1);
        handle.shutdown().await.unwrap();
        drop(service); // closes the database, as the process exiting does
        let log = dir.path().join("explore/events.jsonl");
        assert_eq!(crate::sink::read_log(&log).unwrap().events.len(), 1);

        let (service, handle) = build(&a, &metrics).await.unwrap();
        let position = service.store().checkpointed().await.unwrap().unwrap();
        assert_eq!(position.log[&0], std::fs::metadata(&log).unwrap().len(), "the checkpoint covers the log");
        let other = [crate::model::SeedUser { user_id: "8".into(), demographics: Default::default() }];
        assert_eq!(service.seed(&other, &[]).await.unwrap(), crate::store::SeedOutcome::AlreadyPopulated);
        let user = service.store().get_user("7").await.unwrap().unwrap();
        assert_eq!(Vec::from(user.history), ["i1"]);
        assert!(service.store().get_user("8").await.unwrap().is_none());
        let again = service.ingest(&[like("7", "i1", "r1")]).await.unwrap();
        assert_eq!((again.accepted, again.duplicates), (1, 1), "the id window survives a clean restart");
        handle.shutdown().await.unwrap();
    }

    /// A crash in-process: everything dropped without a final checkpoint.
    #[tokio::test]
    async fn events_after_the_last_checkpoint_are_replayed_once_and_retries_stay_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let (db, log) = (dir.path().join("f.redb"), dir.path().join("events.jsonl"));
        let open = || async {
            let metrics = Metrics::register(&mut Default::default());
            let store = EmbeddedStore::open(Limits::default(), &db, 1000, metrics.store()).await.unwrap();
            let sink = Arc::new(FileSink::open(&log, metrics.sink()).unwrap());
            let recent = RecentEvents::new(Duration::from_secs(600), 1000);
            let service = FeatureService::new("explore", Arc::new(store), sink.clone(), recent, metrics);
            let recovery = service.recover().await.unwrap();
            (service, sink, recovery)
        };
        let (service, sink, _) = open().await;
        service.ingest(&[like("u", "a", "r1"), like("u", "b", "r1")]).await.unwrap();
        service.checkpoint().await.unwrap();
        service.ingest(&[like("u", "c", "r2"), like("v", "a", "r2")]).await.unwrap();
        // A store failure after the log append, then the client's retry: the log holds it twice.
        let retry = [like("v", "d", "r3")];
        let logged = crate::validate::validate_batch(
            &retry,
            &crate::validate::IngestContext { pipeline: "explore", catalog: None, now_ms: now() },
        )
        .unwrap()
        .into_iter()
        .map(|(_, mut l)| {
            l.event_id = crate::dedup::event_id(&retry[0]).map(crate::dedup::format_id);
            l
        })
        .collect::<Vec<_>>();
        sink.append(&logged).await.unwrap();
        service.ingest(&retry).await.unwrap();
        drop((service, sink));

        let (service, _, recovery) = open().await;
        assert_eq!((recovery.replayed, recovery.duplicates), (3, 1), "{recovery:?}");
        let u = service.store().get_user("u").await.unwrap().unwrap();
        assert_eq!(Vec::from(u.history), ["a", "b", "c"]);
        let v = service.store().get_user("v").await.unwrap().unwrap();
        assert_eq!((Vec::from(v.history), v.counters["like"]), (vec!["a".to_owned(), "d".to_owned()], 2));
        let again = service.ingest(&[like("u", "c", "r2"), like("u", "a", "r1")]).await.unwrap();
        assert_eq!(again.duplicates, 2, "ids from before and after the checkpoint are both remembered");
        assert_eq!(service.store().get_item_counters(&["a".into()]).await.unwrap()[0]["like"], 2);
    }

    /// A corrupt record in the log (disk damage, a hand edit) costs that record, with a warning
    /// naming its offset and a counter, never the start-up: no crash loop.
    #[tokio::test]
    async fn a_corrupt_record_is_skipped_at_start_and_the_rest_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let a = args(dir.path(), &["--checkpoint-interval-seconds=0"]);
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::register(&mut registry);
        let (service, handle) = build(&a, &metrics).await.unwrap();
        service.ingest(&[like("u", "a", "r1")]).await.unwrap();
        handle.shutdown().await.unwrap();
        drop(service);
        let log = dir.path().join("explore/events.jsonl");
        let good = std::fs::read_to_string(&log).unwrap();
        let mut later: crate::sink::LoggedEvent = serde_json::from_str(good.trim()).unwrap();
        (later.item_id, later.event_id) = ("b".into(), None);
        let later = serde_json::to_string(&later).unwrap() + "\n";
        std::fs::write(&log, format!("{good}{{\"user_id\": 12, garbage\n{later}")).unwrap();

        let (service, handle) = build(&a, &metrics).await.unwrap();
        let user = service.store().get_user("u").await.unwrap().unwrap();
        assert_eq!(Vec::from(user.history), ["a", "b"]);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("reco_features_event_log_corrupt_records_total 1"), "{text}");
        assert!(text.contains("reco_features_events_replayed_total 1"), "{text}");
        handle.shutdown().await.unwrap();
    }

    /// The embedded store, failing `apply` while `failing` is set (a disk error after the append).
    struct Flaky {
        store: EmbeddedStore,
        failing: std::sync::atomic::AtomicBool,
    }

    #[tonic::async_trait]
    impl FeatureStore for Flaky {
        fn backend(&self) -> &'static str {
            "embedded"
        }
        fn limits(&self) -> Limits {
            self.store.limits()
        }
        async fn get_user(&self, id: &str) -> Result<Option<crate::UserState>, StoreError> {
            self.store.get_user(id).await
        }
        async fn get_item_counters(&self, ids: &[String]) -> Result<Vec<crate::store::Counters>, StoreError> {
            self.store.get_item_counters(ids).await
        }
        async fn apply(&self, events: &[crate::model::FeatureEvent]) -> Result<(), StoreError> {
            if self.failing.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(StoreError::Embedded("disk on fire".into()));
            }
            self.store.apply(events).await
        }
        async fn is_empty(&self) -> Result<bool, StoreError> {
            self.store.is_empty().await
        }
        async fn put_users(
            &self,
            users: std::collections::BTreeMap<String, crate::UserState>,
        ) -> Result<(), StoreError> {
            self.store.put_users(users).await
        }
        async fn checkpointed(&self) -> Result<Option<crate::LogPosition>, StoreError> {
            self.store.checkpointed().await
        }
        fn capture(&self) -> crate::store::Capture {
            self.store.capture()
        }
        async fn save(&self, capture: crate::store::Capture, at: crate::LogPosition) -> Result<(), StoreError> {
            self.store.save(capture, at).await
        }
    }

    /// The first copy of an event reached the log but the store failed; the client's retry was
    /// logged again and applied. After a crash, with or without a checkpoint in between, the
    /// replay must apply the event exactly once (before, a checkpoint in between lost it).
    #[tokio::test]
    async fn a_logged_but_unapplied_copy_neither_hides_nor_doubles_its_retry_after_a_crash() {
        for checkpoint_between in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let (db, log) = (dir.path().join("f.redb"), dir.path().join("events.jsonl"));
            let metrics = Metrics::register(&mut Default::default());
            let store = EmbeddedStore::open(Limits::default(), &db, 1000, metrics.store()).await.unwrap();
            let flaky = Arc::new(Flaky { store, failing: false.into() });
            let sink = Arc::new(FileSink::open(&log, metrics.sink()).unwrap());
            let recent = RecentEvents::new(Duration::from_secs(600), 1000);
            let service = FeatureService::new("explore", flaky.clone(), sink, recent, metrics);
            service.recover().await.unwrap();
            flaky.failing.store(true, std::sync::atomic::Ordering::Relaxed);
            let err = service.ingest(&[like("u", "x", "r1")]).await.unwrap_err();
            assert!(matches!(err, crate::service::IngestError::Store(_)), "{err}");
            flaky.failing.store(false, std::sync::atomic::Ordering::Relaxed);
            if checkpoint_between {
                service.checkpoint().await.unwrap();
            }
            let retry = service.ingest(&[like("u", "x", "r1")]).await.unwrap();
            assert_eq!(retry.duplicates, 0, "the first copy was not applied: the retry is new");
            assert_eq!(crate::sink::read_log(&log).unwrap().events.len(), 2);
            drop((service, flaky));

            let metrics = Metrics::register(&mut Default::default());
            let store = EmbeddedStore::open(Limits::default(), &db, 1000, metrics.store()).await.unwrap();
            let sink = Arc::new(FileSink::open(&log, metrics.sink()).unwrap());
            let recent = RecentEvents::new(Duration::from_secs(600), 1000);
            let service = FeatureService::new("explore", Arc::new(store), sink, recent, metrics);
            service.recover().await.unwrap();
            let user = service.store().get_user("u").await.unwrap().expect("the event survives");
            assert_eq!(user.counters["like"], 1, "checkpoint between: {checkpoint_between}");
            let again = service.ingest(&[like("u", "x", "r1")]).await.unwrap();
            assert_eq!(again.duplicates, 1, "checkpoint between: {checkpoint_between}");
        }
    }

    /// A client that gives up mid-write (the gateway's timeout) does not cut the write short: it
    /// finishes, and the retry is recognised.
    #[tokio::test]
    async fn a_cancelled_request_still_finishes_its_write() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::register(&mut Default::default());
        let (service, handle) = build(&args(dir.path(), &[]), &metrics).await.unwrap();
        {
            // Poll the request once (it validates and hands the write to its task, which cannot
            // have run yet on this single-threaded runtime), then drop it: the client gave up.
            let events = [like("u", "x", "r1")];
            let mut request = std::pin::pin!(service.ingest(&events));
            let first = std::future::poll_fn(|cx| std::task::Poll::Ready(request.as_mut().poll(cx))).await;
            assert!(first.is_pending(), "the write cannot have finished before its task ran");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let retry = service.ingest(&[like("u", "x", "r1")]).await.unwrap();
        assert_eq!(retry.duplicates, 1);
        assert_eq!(service.store().get_user("u").await.unwrap().unwrap().counters["like"], 1);
        handle.shutdown().await.unwrap();
    }

    fn now() -> i64 {
        1_700_000_000_000
    }

    #[tokio::test]
    async fn checkpoints_are_taken_periodically() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::register(&mut Default::default());
        let (service, handle) = build(&args(dir.path(), &["--checkpoint-interval-seconds=1"]), &metrics).await.unwrap();
        service.ingest(&[like("1", "a", "r")]).await.unwrap();
        let mut position = service.store().checkpointed().await.unwrap().unwrap();
        assert!(position.log.is_empty());
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            position = service.store().checkpointed().await.unwrap().unwrap();
            if position.log.get(&0) > Some(&0) {
                break;
            }
        }
        assert!(position.log.get(&0) > Some(&0), "no checkpoint after 10 s");
        handle.shutdown().await.unwrap();
    }
}
