//! Figures of the events path for BENCHMARKS.md (`scripts/bench.sh features`): run in release.
//!
//!     ingest_bench ingest --clients 64 --events 50000   # events/s acknowledged, ack latency over gRPC
//!     ingest_bench ingest --kafka-brokers HOST:PORT      # the same with the Kafka log (topic `bench`)
//!     ingest_bench ingest --kafka-brokers B --redis-url U # Redis, applied by the partitions' owner
//!     ingest_bench replay --events 1000000              # start-up replay of a log after a crash
//!     ingest_bench memory --users 1000000 --max-users 100000
//!
//! Each mode runs the service as `reco serve features` builds it (embedded store, file log) in a
//! temporary data directory, and prints one Markdown table row.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use reco_features::{FeaturesArgs, Metrics};
use reco_proto::events_client::EventsClient;
use reco_proto::{Event, EventType, IngestRequest};

#[derive(Parser)]
struct Cli {
    /// ingest, replay or memory.
    mode: String,
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, default_value_t = 50_000)]
    events: usize,
    #[arg(long, default_value_t = 1_000_000)]
    users: usize,
    #[arg(long, default_value_t = 100_000)]
    max_users: usize,
    /// Log to the Kafka topic `bench` on these brokers instead of the file.
    #[arg(long)]
    kafka_brokers: Option<String>,
    /// Keep the features in this Redis (with Kafka: applied by the owner of each partition).
    #[arg(long)]
    redis_url: Option<String>,
}

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    args: FeaturesArgs,
}

fn features_args(dir: &std::path::Path, extra: &[String]) -> FeaturesArgs {
    let mut flags = vec!["features".to_owned(), "--pipeline=bench".into(), format!("--data-dir={}", dir.display())];
    flags.extend(extra.iter().cloned());
    Flags::parse_from(flags).args
}

fn event(n: u64, users: u64) -> Event {
    Event {
        user_id: format!("u{}", n % users),
        item_id: format!("i{}", n % 1682),
        r#type: EventType::Click as i32,
        request_id: format!("r{n}"),
        ..Default::default()
    }
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn ingest(cli: &Cli) {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::register(&mut Default::default());
    let mut flags: Vec<String> = match &cli.kafka_brokers {
        Some(brokers) => {
            vec!["--event-sink=kafka".into(), format!("--kafka-brokers={brokers}"), "--kafka-topic=bench".into()]
        }
        None => Vec::new(),
    };
    if let Some(url) = &cli.redis_url {
        flags.extend(["--backend=redis".into(), format!("--redis-url={url}")]);
    }
    let (service, handle) = reco_features::build(&features_args(dir.path(), &flags), &metrics).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(reco_proto::serve_on(reco_features::grpc_routes(service), listener, async {
        let _ = stopped.await;
    }));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let next = Arc::new(AtomicU64::new(0));
    let total = cli.events as u64;
    let started = Instant::now();
    let tasks: Vec<_> = (0..cli.clients)
        .map(|_| {
            let (mut rpc, next) = (EventsClient::new(channel.clone()), next.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        return latencies;
                    }
                    let sent = Instant::now();
                    rpc.ingest(IngestRequest { events: vec![event(n, 10_000)] }).await.unwrap();
                    latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                }
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let log = match (&cli.kafka_brokers, &cli.redis_url) {
        (Some(_), Some(_)) => "Kafka (tansu, 3 partitions, acks=all) + Redis, applied by the partitions' owner",
        (Some(_), None) => "Kafka (tansu, 3 partitions, acks=all)",
        (None, Some(_)) => "embedded file log + Redis",
        (None, None) => "embedded file log",
    };
    println!(
        "| {log}, gRPC, {} clients, 1 event per request | {} | {:.0} | {:.2} | {:.2} |",
        cli.clients,
        cli.events,
        cli.events as f64 / seconds,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    handle.shutdown().await.unwrap();
}

async fn replay(cli: &Cli) {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::register(&mut Default::default());
    let args = features_args(dir.path(), &["--checkpoint-interval-seconds=0".into()]);
    {
        // A crash before any checkpoint: the whole log is to replay. Written in big batches.
        let sink = reco_features::FileSink::open(&dir.path().join("bench/events.jsonl"), metrics.sink()).unwrap();
        let mut n = 0u64;
        while n < cli.events as u64 {
            let batch: Vec<_> = (n..(n + 10_000).min(cli.events as u64))
                .map(|k| {
                    let e = event(k, 100_000);
                    reco_features::LoggedEvent {
                        user_id: e.user_id,
                        item_id: e.item_id,
                        kind: reco_features::model::EventKind::Click,
                        dwell_ms: 0,
                        at_ms: 1_700_000_000_000,
                        pipeline: "bench".into(),
                        model_version: "v1".into(),
                        request_id: e.request_id,
                        event_id: Some(reco_features::dedup::format_id(u128::from(k))),
                    }
                })
                .collect();
            n += batch.len() as u64;
            reco_features::EventSink::append(&sink, &batch).await.unwrap();
        }
        reco_features::EventSink::close(&sink).await.unwrap();
    }
    let bytes = std::fs::metadata(dir.path().join("bench/events.jsonl")).unwrap().len();
    let started = Instant::now();
    let (_service, handle) = reco_features::build(&args, &metrics).await.unwrap();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "| {} | {:.0} MiB | {:.1} | {:.1} | {:.0} |",
        cli.events,
        bytes as f64 / (1 << 20) as f64,
        seconds,
        seconds * 1e6 / cli.events as f64,
        rss_mib()
    );
    handle.shutdown().await.unwrap();
}

async fn memory(cli: &Cli) {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::register(&mut Default::default());
    let flags = [format!("--max-users-in-memory={}", cli.max_users)];
    let (service, handle) = reco_features::build(&features_args(dir.path(), &flags), &metrics).await.unwrap();
    let started = Instant::now();
    let step = cli.users / 10;
    let mut rows = Vec::new();
    for n in (0..cli.users as u64).step_by(1000) {
        let batch: Vec<_> = (n..(n + 1000).min(cli.users as u64)).map(|k| event(k, u64::MAX)).collect();
        service.ingest(&batch).await.unwrap();
        let seen = n as usize + batch.len();
        if seen.is_multiple_of(step) {
            rows.push(format!("| {} | {seen} | {:.0} | {} |", cli.max_users, rss_mib(), metrics.users_in_memory.get()));
        }
        tokio::task::yield_now().await;
    }
    for row in rows {
        println!("{row}");
    }
    eprintln!("{} users in {:.1} s", cli.users, started.elapsed().as_secs_f64());
    handle.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match cli.mode.as_str() {
        "ingest" => ingest(&cli).await,
        "replay" => replay(&cli).await,
        "memory" => memory(&cli).await,
        other => panic!("unknown mode {other}: ingest, replay or memory"),
    }
}
