//! `reco serve features`: the flags, building the service from them, and serving gRPC.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reco_proto::events_server::EventsServer;
use reco_proto::features_server::FeaturesServer;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::embedded::EmbeddedStore;
use crate::metrics::Metrics;
use crate::model::{DEFAULT_HISTORY_LEN, Limits};
use crate::redis::RedisStore;
use crate::service::FeatureService;
use crate::sink::{EventSink, FileSink, SinkError};
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
    /// Kafka bootstrap servers for `--event-sink=kafka`.
    #[arg(long)]
    pub kafka_brokers: Option<String>,
    /// Kafka topic for `--event-sink=kafka`.
    #[arg(long)]
    pub kafka_topic: Option<String>,
    /// Seconds between snapshots of the embedded store (0: only at shutdown).
    #[arg(long, default_value_t = 60)]
    pub snapshot_interval_seconds: u64,
    /// Session events kept per user.
    #[arg(long, default_value_t = crate::model::DEFAULT_SESSION_LEN, value_parser = session_len_parser())]
    pub session_len: usize,
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
    #[error("the Kafka sink is not built yet; use --event-sink=embedded (the file log)")]
    KafkaNotBuilt,
    #[error("--backend=redis needs --redis-url")]
    MissingRedisUrl,
    #[error("--pipeline {0:?} is not a valid pipeline name (lowercase letters, digits, '-', '.'; at most 253)")]
    InvalidPipeline(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    #[error("closing the event log: {0}")]
    Sink(#[from] SinkError),
    #[error("final snapshot: {0}")]
    Store(#[from] StoreError),
}

/// Owns the background work of a built service; [`ServiceHandle::shutdown`] ends it cleanly.
pub struct ServiceHandle {
    store: Arc<dyn FeatureStore>,
    sink: Arc<dyn EventSink>,
    stop: watch::Sender<bool>,
    snapshots: Option<JoinHandle<()>>,
}

impl ServiceHandle {
    /// Stops periodic snapshots, closes the event log (finishing pending appends) and writes a
    /// final snapshot. Call it after the servers stopped taking requests.
    pub async fn shutdown(mut self) -> Result<(), ShutdownError> {
        let _ = self.stop.send(true);
        if let Some(task) = self.snapshots.take() {
            let _ = task.await;
        }
        let closed = self.sink.close().await;
        self.store.persist().await?;
        Ok(closed?)
    }
}

/// A Kubernetes object name, so it is safe as a directory and a Redis key part.
fn valid_pipeline(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// Builds the service from its flags: opens (and reloads) the store, opens the event log and
/// starts periodic snapshots of the embedded store.
pub async fn build(args: &FeaturesArgs, metrics: &Metrics) -> Result<(FeatureService, ServiceHandle), BuildError> {
    if args.event_sink == EventSinkKind::Kafka {
        return Err(BuildError::KafkaNotBuilt);
    }
    if !valid_pipeline(&args.pipeline) {
        return Err(BuildError::InvalidPipeline(args.pipeline.clone()));
    }
    let limits = Limits { history_len: DEFAULT_HISTORY_LEN, session_len: args.session_len };
    let dir = args.data_dir.join(&args.pipeline);
    let store: Arc<dyn FeatureStore> = match args.backend {
        Backend::Embedded => Arc::new(
            EmbeddedStore::open(limits, dir.join("features-snapshot.json"), Some(metrics.snapshot_seconds.clone()))
                .await?,
        ),
        Backend::Redis => {
            let url = args.redis_url.as_deref().ok_or(BuildError::MissingRedisUrl)?;
            Arc::new(RedisStore::connect(url, &args.pipeline, limits).await?)
        }
    };
    let log = dir.join("events.jsonl");
    let sink_metrics = metrics.sink();
    let sink: Arc<dyn EventSink> =
        Arc::new(tokio::task::spawn_blocking(move || FileSink::open(&log, sink_metrics)).await.map_err(|e| {
            SinkError::Write { path: dir.join("events.jsonl"), reason: format!("opening task failed: {e}") }
        })??);
    let (stop, stopped) = watch::channel(false);
    let snapshots = (args.backend == Backend::Embedded && args.snapshot_interval_seconds > 0).then(|| {
        tokio::spawn(snapshot_loop(store.clone(), Duration::from_secs(args.snapshot_interval_seconds), stopped))
    });
    let service = FeatureService::new(&args.pipeline, store.clone(), sink.clone(), metrics.clone());
    Ok((service, ServiceHandle { store, sink, stop, snapshots }))
}

async fn snapshot_loop(store: Arc<dyn FeatureStore>, every: Duration, mut stopped: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is immediate; the store was just loaded
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                if let Err(e) = store.persist().await {
                    tracing::warn!(error = %e, "periodic feature snapshot failed; will retry");
                }
            }
            _ = stopped.changed() => return,
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
        assert_eq!(a.snapshot_interval_seconds, 60);
        let a = Cli::try_parse_from(operator_flags("embedded", "kafka")).unwrap().args;
        assert_eq!((a.backend, a.event_sink), (Backend::Embedded, EventSinkKind::Kafka));
        let a = Cli::try_parse_from(operator_flags("embedded", "file")).unwrap().args;
        assert_eq!(a.event_sink, EventSinkKind::Embedded);
        assert!(Cli::try_parse_from(operator_flags("memcached", "embedded")).is_err());
        let mut zero = operator_flags("embedded", "embedded");
        zero.push("--session-len=0".into());
        assert!(Cli::try_parse_from(zero).is_err());
    }

    fn args(dir: &std::path::Path, extra: &[&str]) -> FeaturesArgs {
        let mut flags = vec!["x".to_owned(), "--pipeline=explore".into(), format!("--data-dir={}", dir.display())];
        flags.extend(extra.iter().map(|s| (*s).to_owned()));
        Cli::try_parse_from(flags).unwrap().args
    }

    #[tokio::test]
    async fn kafka_is_a_clear_error_not_a_silent_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::register(&mut Default::default());
        let err = build(&args(dir.path(), &["--event-sink=kafka"]), &metrics).await.err().unwrap();
        assert!(err.to_string().contains("the Kafka sink is not built yet"), "{err}");
        let err = build(&args(dir.path(), &["--backend=redis"]), &metrics).await.err().unwrap();
        assert!(matches!(err, BuildError::MissingRedisUrl), "{err}");
        let mut escaping = args(dir.path(), &[]);
        escaping.pipeline = "../etc".into();
        let err = build(&escaping, &metrics).await.err().unwrap();
        assert!(matches!(err, BuildError::InvalidPipeline(_)), "{err}");
    }

    #[tokio::test]
    async fn shutdown_snapshots_and_a_restart_reloads_instead_of_reseeding() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::register(&mut Default::default());
        let a = args(dir.path(), &["--snapshot-interval-seconds=0"]);
        let (service, handle) = build(&a, &metrics).await.unwrap();
        let users = [crate::model::SeedUser { user_id: "7".into(), demographics: Default::default() }];
        assert_eq!(service.seed(&users, &[]).await.unwrap(), crate::store::SeedOutcome::Seeded { users: 1 });
        let event = reco_proto::Event {
            user_id: "7".into(),
            item_id: "i1".into(),
            r#type: reco_proto::EventType::Like as i32,
            ..Default::default()
        };
        assert_eq!(service.ingest(&[event]).await.unwrap(), 1);
        handle.shutdown().await.unwrap();
        assert!(dir.path().join("explore/features-snapshot.json").exists());
        assert_eq!(crate::sink::read_log(&dir.path().join("explore/events.jsonl")).unwrap().events.len(), 1);

        let (service, handle) = build(&a, &metrics).await.unwrap();
        let other = [crate::model::SeedUser { user_id: "8".into(), demographics: Default::default() }];
        assert_eq!(service.seed(&other, &[]).await.unwrap(), crate::store::SeedOutcome::AlreadyPopulated);
        let user = service.store().get_user("7").await.unwrap().unwrap();
        assert_eq!(Vec::from(user.history), ["i1"]);
        assert!(service.store().get_user("8").await.unwrap().is_none());
        handle.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn snapshots_are_taken_periodically() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::register(&mut Default::default());
        let (service, handle) = build(&args(dir.path(), &["--snapshot-interval-seconds=1"]), &metrics).await.unwrap();
        let users = [crate::model::SeedUser { user_id: "1".into(), demographics: Default::default() }];
        service.seed(&users, &[]).await.unwrap();
        let snapshot = dir.path().join("explore/features-snapshot.json");
        assert!(!snapshot.exists());
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if snapshot.exists() {
                break;
            }
        }
        assert!(snapshot.exists(), "no snapshot after 10 s");
        handle.shutdown().await.unwrap();
    }
}
