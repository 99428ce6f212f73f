//! The Kafka event log against a real Kafka-protocol broker (tansu, started here): events are
//! produced keyed by user id with acks=all before they are acknowledged, a crashed service
//! replays its partitions from its checkpoint, the consumer group's offsets follow the
//! checkpoints, and a broker restart under load loses nothing acknowledged and applies nothing
//! twice. With Redis, several replicas split the partitions through the consumer group and
//! apply each event once.

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use reco_features::{FeatureService, FeaturesArgs, Metrics, ServiceHandle};
use reco_proto::{Event, EventType};

/// A real Kafka-protocol broker (tansu, SQLite storage in a temp dir) on a free loopback port.
pub struct KafkaBroker {
    child: Option<Child>,
    bin: PathBuf,
    port: u16,
    pub brokers: String,
    dir: tempfile::TempDir,
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log = self.log();
            let tail = &log[log.len().saturating_sub(20_000)..];
            eprintln!("--- the broker's log (tansu.log), last 20 kB:\n{tail}");
        }
    }
}

impl KafkaBroker {
    /// Starts a broker, or returns `None` (saying why) when tansu is not installed.
    pub fn start() -> Option<KafkaBroker> {
        let Some(bin) = std::env::var_os("TANSU_BIN").map(PathBuf::from).filter(|p| p.exists()) else {
            eprintln!("SKIP: no Kafka broker (set TANSU_BIN: eval \"$(scripts/ensure-kafka-broker.sh)\")");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let mut broker = KafkaBroker { child: None, bin, port, brokers: format!("127.0.0.1:{port}"), dir };
        broker.restart();
        Some(broker)
    }

    /// Kills the broker (SIGKILL): what it acknowledged is in its SQLite file.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and storage, and waits until it listens.
    pub fn restart(&mut self) {
        self.stop();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(&self.bin)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("tansu.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {}:\n{}", self.brokers, self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        // Something else may have taken the port while the broker was down: then ours exits.
        std::thread::sleep(Duration::from_millis(200));
        if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
            panic!("tansu exited ({status}) on {}:\n{}", self.brokers, self.log());
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        let status = Command::new(&self.bin)
            .args(["topic", "create", name, "--partitions", &partitions.to_string()])
            .args(["--broker", &format!("tcp://{}", self.brokers)])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "tansu topic create {name}");
    }
}

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    args: FeaturesArgs,
}

const TOPIC: &str = "events";
const PARTITIONS: u32 = 3;

async fn start_service(broker: &KafkaBroker, data: &std::path::Path) -> (FeatureService, ServiceHandle) {
    let (service, handle, _) = start_with(broker, data, &[]).await;
    (service, handle)
}

/// A features replica on Redis: it applies the partitions the group gives it.
async fn start_replica(
    broker: &KafkaBroker,
    redis: &str,
    data: &std::path::Path,
) -> (FeatureService, ServiceHandle, Metrics) {
    start_with(broker, data, &["--backend=redis".into(), format!("--redis-url={redis}")]).await
}

async fn start_with(
    broker: &KafkaBroker,
    data: &std::path::Path,
    extra: &[String],
) -> (FeatureService, ServiceHandle, Metrics) {
    let mut flags = vec![
        "features".to_owned(),
        "--pipeline=explore".into(),
        format!("--data-dir={}", data.display()),
        "--event-sink=kafka".into(),
        format!("--kafka-brokers={}", broker.brokers),
        format!("--kafka-topic={TOPIC}"),
        "--checkpoint-interval-seconds=0".into(),
    ];
    flags.extend_from_slice(extra);
    let metrics = Metrics::register(&mut Default::default());
    let (service, handle) = reco_features::build(&Flags::parse_from(flags).args, &metrics).await.unwrap();
    (service, handle, metrics)
}

fn event(n: usize, users: usize) -> Event {
    let kinds = [EventType::Click, EventType::Like, EventType::Hide, EventType::Save];
    Event {
        user_id: format!("u{}", n % users),
        item_id: format!("i{}", n % 17),
        r#type: kinds[n % kinds.len()] as i32,
        event_id: format!("e{n}"),
        ..Default::default()
    }
}

/// Each user's counters, and each user's history, as a store that applied `events` once holds them.
fn model(events: &[Event]) -> BTreeMap<String, (BTreeMap<String, u64>, Vec<String>)> {
    let mut users: BTreeMap<String, (BTreeMap<String, u64>, Vec<String>)> = BTreeMap::new();
    for e in events {
        let user = users.entry(e.user_id.clone()).or_default();
        let name = EventType::try_from(e.r#type).unwrap().name().unwrap().to_owned();
        *user.0.entry(name).or_default() += 1;
        if e.r#type != EventType::Hide as i32 {
            user.1.retain(|i| i != &e.item_id);
            user.1.push(e.item_id.clone());
        }
    }
    users
}

async fn assert_matches(service: &FeatureService, events: &[Event]) {
    for (user_id, (counters, history)) in model(events) {
        let got = service.store().get_user(&user_id).await.unwrap().unwrap_or_else(|| panic!("{user_id} unknown"));
        assert_eq!((got.counters, Vec::from(got.history)), (counters, history), "{user_id}");
    }
}

fn committed(broker: &KafkaBroker) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.brokers)
        .set("group.id", "reco-features-explore")
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    for p in 0..PARTITIONS as i32 {
        partitions.add_partition(TOPIC, p);
    }
    let offsets = consumer.committed_offsets(partitions, Duration::from_secs(10)).unwrap();
    offsets
        .elements()
        .iter()
        .map(|e| (e.partition(), if let Offset::Offset(o) = e.offset() { o } else { -1 }))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashed_service_replays_its_partitions_from_the_checkpoint_and_the_group_follows() {
    let Some(broker) = KafkaBroker::start() else { return };
    broker.create_topic(TOPIC, PARTITIONS);
    let data = tempfile::tempdir().unwrap();
    let events: Vec<Event> = (0..300).map(|n| event(n, 20)).collect();

    let (service, handle) = start_service(&broker, data.path()).await;
    for batch in events[..200].chunks(7) {
        assert_eq!(service.ingest(batch).await.unwrap().accepted, batch.len());
    }
    service.checkpoint().await.unwrap();
    let at_checkpoint = committed(&broker);
    assert_eq!(at_checkpoint.values().map(|o| *o as usize).sum::<usize>(), 200, "{at_checkpoint:?}");
    assert!(at_checkpoint.values().all(|o| *o > 0), "keyed by user: every partition got users {at_checkpoint:?}");
    for batch in events[200..].chunks(7) {
        service.ingest(batch).await.unwrap();
    }
    // A crash: no final checkpoint, the store's file closed as the process exiting closes it.
    drop(handle);
    drop(service);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (service, handle) = start_service(&broker, data.path()).await;
    assert_matches(&service, &events).await;
    let again = service.ingest(&events[290..]).await.unwrap();
    assert_eq!(again.duplicates, 10, "ids logged after the checkpoint are remembered too");
    assert_eq!(committed(&broker), at_checkpoint, "offsets move only with a checkpoint");
    handle.shutdown().await.unwrap();
    assert_eq!(committed(&broker).values().sum::<i64>(), 300);

    // The topic is the training log: exported, every positive event once (75 of 300 are hides).
    let topic = reco_features::kafka::KafkaTopic {
        brokers: broker.brokers.clone(),
        topic: TOPIC.into(),
        group: "export".into(),
    };
    let out = tempfile::tempdir().unwrap();
    let exported = tokio::task::spawn_blocking(move || {
        let log = reco_features::kafka::read_topic(&topic).unwrap();
        reco_features::export::export_interactions(vec![log], out.path(), None).unwrap()
    })
    .await
    .unwrap();
    assert_eq!((exported.records, exported.interactions, exported.skipped), (300, 225, 75), "{exported:?}");
}

/// Clients keep sending (retrying a batch until acknowledged) while the broker is killed and
/// restarted: every acknowledged event is in the topic, and the features hold each event once.
///
/// Deliveries get 60 s here, not the default 10: when a delivery times out, librdkafka bumps
/// its idempotent producer's epoch, and tansu 0.6.0's SQLite engine panics on a batch still in
/// flight with the old epoch (`more or less than one row`, lite.rs:503), after which every
/// produce fails with an unknown broker error. A real broker answers such a batch with
/// INVALID_PRODUCER_EPOCH. On a loaded machine the 2 s outage plus tansu's start sometimes
/// took past 10 s, so the stand-in, not the service, failed the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_restart_under_load_loses_nothing_acknowledged_and_applies_nothing_twice() {
    let Some(mut broker) = KafkaBroker::start() else { return };
    broker.create_topic(TOPIC, PARTITIONS);
    let data = tempfile::tempdir().unwrap();
    let (service, handle, _) = start_with(&broker, data.path(), &["--kafka-delivery-timeout-seconds=60".into()]).await;
    let events: Arc<Vec<Event>> = Arc::new((0..2000).map(|n| event(n, 40)).collect());
    let (acked, failed, slowest_ms) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicU64::new(0)));
    // A broker that never comes back fails the test naming it rather than hanging it.
    let deadline = Instant::now() + Duration::from_secs(180);
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (service, events, acked, failed, slowest_ms) =
                (service.clone(), events.clone(), acked.clone(), failed.clone(), slowest_ms.clone());
            tokio::spawn(async move {
                // Client c sends the events of its users (user index % 4 == c), in order.
                let mine: Vec<Event> =
                    events.iter().filter(|e| e.user_id[1..].parse::<usize>().unwrap() % 4 == c).cloned().collect();
                for batch in mine.chunks(5) {
                    let mut last_error = None;
                    loop {
                        assert!(Instant::now() < deadline, "a batch still failing after 180 s: {last_error:?}");
                        let sent = Instant::now();
                        // Past the producer's 60 s delivery timeout an ingest must have answered.
                        let answer = tokio::time::timeout(Duration::from_secs(90), service.ingest(batch))
                            .await
                            .expect("an ingest hung for 90 s");
                        slowest_ms.fetch_max(sent.elapsed().as_millis() as u64, Ordering::Relaxed);
                        match answer {
                            Ok(_) => break,
                            Err(e) => {
                                last_error = Some(e.to_string());
                                failed.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                    acked.fetch_add(batch.len(), Ordering::Relaxed);
                }
            })
        })
        .collect();
    while acked.load(Ordering::Relaxed) < 500 {
        assert!(
            Instant::now() < deadline,
            "{} of 500 events acknowledged before the restart",
            acked.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::task::block_in_place(|| {
        broker.stop();
        std::thread::sleep(Duration::from_secs(2));
        broker.restart();
    });
    for c in clients {
        c.await.unwrap();
    }
    // The producer holds records while the broker is down and delivers them when it is back
    // (within its delivery timeout; beyond it the request fails and the client retries).
    let slowest = slowest_ms.load(Ordering::Relaxed);
    assert!(slowest >= 1500, "no request waited for the stopped broker (slowest {slowest} ms)");
    println!("slowest acknowledgement {slowest} ms, {} failed requests retried", failed.load(Ordering::Relaxed));
    assert_matches(&service, &events).await;
    handle.shutdown().await.unwrap();
    drop(service);
    assert_eq!(committed(&broker).values().sum::<i64>() as usize, events.len(), "one record per event in the topic");
}

/// Waits up to 60 s for `done`, naming `what` if it never holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "after 60 s: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The partitions of each replica once the group gave every partition to exactly one of them.
fn split(handles: &[&ServiceHandle]) -> Option<Vec<Vec<i32>>> {
    let owned: Vec<Vec<i32>> = handles.iter().map(|h| h.owned_partitions()).collect();
    let mut all: Vec<i32> = owned.iter().flatten().copied().collect();
    all.sort_unstable();
    (all == (0..PARTITIONS as i32).collect::<Vec<_>>() && owned.iter().all(|o| !o.is_empty())).then_some(owned)
}

/// Ingests `batches` through `took`, each followed by a read on the same replica that must show
/// the batch (read-your-writes although another replica may own the user's partition).
async fn ingest_and_read_back(took: &FeatureService, events: &[Event], upto: usize) {
    let batch = &events[upto.saturating_sub(5)..upto];
    took.ingest(batch).await.unwrap();
    let user = &batch.last().unwrap().user_id;
    let (counters, history) = model(&events[..upto]).remove(user).unwrap();
    let got = took.store().get_user(user).await.unwrap().unwrap();
    assert_eq!((got.counters, Vec::from(got.history)), (counters, history), "{user} read back at once");
}

/// Two replicas share Redis and the topic: the group splits the partitions between them, each
/// event is applied once by its partition's owner whichever replica took it (a retry through
/// the other replica included), and when one leaves the other takes its partitions over; when
/// it comes back, nothing is applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_on_redis_split_the_partitions_and_apply_each_event_once() {
    let Some(broker) = KafkaBroker::start() else { return };
    let Some(redis) = common::start_redis().await else { return };
    broker.create_topic(TOPIC, PARTITIONS);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, handle_a, metrics_a) = start_replica(&broker, &redis.url, dir_a.path()).await;
    let (b, handle_b, metrics_b) = start_replica(&broker, &redis.url, dir_b.path()).await;
    eventually("the group splits the partitions between the two replicas", || split(&[&handle_a, &handle_b]).is_some())
        .await;
    println!("owned: {:?}", split(&[&handle_a, &handle_b]));

    let events: Vec<Event> = (0..600).map(|n| event(n, 30)).collect();
    let mut records = 0;
    for (i, upto) in (5..=400).step_by(5).enumerate() {
        let (took, other) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        ingest_and_read_back(took, &events, upto).await;
        records += 5;
        if i % 5 == 0 {
            // The client's retry went through the other replica: logged again, applied once.
            other.ingest(&events[upto - 5..upto]).await.unwrap();
            records += 5;
        }
    }
    assert_matches(&a, &events[..400]).await;
    let applied = |m: &[&Metrics]| m.iter().map(|m| m.events_applied.get()).sum::<u64>();
    assert!(metrics_a.events_applied.get() > 0 && metrics_b.events_applied.get() > 0, "both replicas applied events");
    assert_eq!(applied(&[&metrics_a, &metrics_b]), 400);
    assert_eq!(metrics_a.events_duplicate.get() + metrics_b.events_duplicate.get(), 80, "retries applied once");

    // B leaves: A takes every partition and applies what B's clients send to it.
    handle_b.shutdown().await.unwrap();
    drop(b);
    eventually("replica A owns every partition", || handle_a.owned_partitions().len() == PARTITIONS as usize).await;
    for upto in (405..=500).step_by(5) {
        ingest_and_read_back(&a, &events, upto).await;
        records += 5;
    }

    // B comes back: the partitions are split again and nothing is applied twice.
    let (b, handle_b, metrics_b2) = start_replica(&broker, &redis.url, dir_b.path()).await;
    eventually("the group splits the partitions again", || split(&[&handle_a, &handle_b]).is_some()).await;
    for upto in (505..=600).step_by(5) {
        ingest_and_read_back(&b, &events, upto).await;
        records += 5;
    }
    assert_matches(&b, &events).await;
    assert_eq!(applied(&[&metrics_a, &metrics_b, &metrics_b2]), 600, "every event applied once in all");
    eventually("the group's committed offsets reach the end of the topic", || {
        committed(&broker).values().sum::<i64>() == records
    })
    .await;
    handle_b.shutdown().await.unwrap();
    handle_a.shutdown().await.unwrap();
}

/// A record in the topic that is not an event (another producer's bytes) is skipped by its
/// partition's owner, counted and named; the events around it are applied and the partition
/// goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_owner_skips_a_corrupt_record_and_goes_on() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let Some(broker) = KafkaBroker::start() else { return };
    let Some(redis) = common::start_redis().await else { return };
    broker.create_topic(TOPIC, PARTITIONS);
    let data = tempfile::tempdir().unwrap();
    let (service, handle, metrics) = start_replica(&broker, &redis.url, data.path()).await;
    eventually("the replica owns every partition", || handle.owned_partitions().len() == PARTITIONS as usize).await;
    let events: Vec<Event> = (0..60).map(|n| event(n, 6)).collect();
    service.ingest(&events[..30]).await.unwrap();
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &broker.brokers).create().unwrap();
    for user in 0..6 {
        let key = format!("u{user}");
        let record = FutureRecord::to(TOPIC).key(&key).payload("{not an event");
        producer.send(record, Duration::from_secs(10)).await.unwrap();
    }
    service.ingest(&events[30..]).await.unwrap();
    assert_matches(&service, &events).await;
    eventually("every corrupt record counted", || metrics.event_log_corrupt_records.get() == 6).await;
    assert_eq!(metrics.events_applied.get(), 60);
    handle.shutdown().await.unwrap();
}
