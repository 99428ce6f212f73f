//! `reco serve features` killed with SIGKILL at random moments under event load, again and
//! again: after each restart it replays its event log from the last checkpoint, and at the end
//! the online features equal a model of the events, each applied exactly once, although clients
//! retried every event whose answer the kill swallowed.
//!
//! Users are split between the clients and each client sends its users' events in order, so the
//! model knows every user's session and history order, not just the counts. A small
//! `--max-users-in-memory` makes the store evict and read users back throughout.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use reco_demo::stack::free_port;
use reco_proto::events_client::EventsClient;
use reco_proto::features_client::FeaturesClient;
use reco_proto::{Event, EventType, GetItemCountersRequest, GetUserRequest, IngestRequest};
use tonic::transport::{Channel, Endpoint};

const USERS: usize = 120;
const ITEMS: usize = 40;
const EVENTS: usize = 20_000;
const CLIENTS: usize = 4;
const KILLS: usize = 20;
const SESSION_LEN: usize = 20;

struct Server {
    child: Child,
    grpc: u16,
}

impl Server {
    fn start(data: &Path, http: u16, grpc: u16) -> Server {
        let child = Command::new(env!("CARGO_BIN_EXE_reco"))
            .args(["serve", "features", "--pipeline=explore", "--checkpoint-interval-seconds=1"])
            .args(["--max-users-in-memory=30", &format!("--session-len={SESSION_LEN}")])
            .arg(format!("--data-dir={}", data.display()))
            .args([format!("--http=127.0.0.1:{http}"), format!("--grpc=127.0.0.1:{grpc}")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("reco serve features starts");
        let server = Server { child, grpc };
        let deadline = Instant::now() + Duration::from_secs(60);
        while reqwest::blocking::get(format!("http://127.0.0.1:{http}/readyz")).map(|r| r.status().as_u16()).ok()
            != Some(200)
        {
            assert!(Instant::now() < deadline, "not ready within 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn kill(self) {} // SIGKILL, in Drop
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

/// The events, each with its own id; user `u` belongs to client `u % CLIENTS`.
fn events() -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(15);
    let kinds = [EventType::Click, EventType::Like, EventType::Save, EventType::Hide, EventType::Dwell];
    (0..EVENTS)
        .map(|n| {
            let kind = kinds[rng.random_range(0..kinds.len())];
            Event {
                user_id: format!("u{}", rng.random_range(0..USERS)),
                item_id: format!("i{}", rng.random_range(0..ITEMS)),
                r#type: kind as i32,
                dwell_ms: if kind == EventType::Dwell { 1500 } else { 0 },
                event_id: format!("e{n}"),
                ..Default::default()
            }
        })
        .collect()
}

/// What the store must hold: each event applied once, in each user's order.
#[derive(Default, Debug, PartialEq)]
struct Expected {
    session: VecDeque<(String, i32)>,
    history: Vec<String>,
    counters: BTreeMap<String, u64>,
}

fn model(events: &[Event]) -> (BTreeMap<String, Expected>, BTreeMap<String, BTreeMap<String, u64>>) {
    let (mut users, mut items) = (BTreeMap::<String, Expected>::new(), BTreeMap::<String, BTreeMap<_, _>>::new());
    for e in events {
        let name = EventType::try_from(e.r#type).unwrap().name().unwrap().to_owned();
        let user = users.entry(e.user_id.clone()).or_default();
        user.session.push_back((e.item_id.clone(), e.r#type));
        if user.session.len() > SESSION_LEN {
            user.session.pop_front();
        }
        if e.r#type != EventType::Hide as i32 {
            user.history.retain(|i| i != &e.item_id);
            user.history.push(e.item_id.clone());
        }
        *user.counters.entry(name.clone()).or_default() += 1;
        *items.entry(e.item_id.clone()).or_default().entry(name).or_default() += 1;
    }
    (users, items)
}

/// Sends its users' events in order, in batches of 1 to 5, retrying a batch until acknowledged.
async fn client(id: usize, events: Arc<Vec<Event>>, grpc: u16, acked: Arc<AtomicUsize>, retried: Arc<AtomicUsize>) {
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{grpc}"))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    let mut rpc = EventsClient::new(channel);
    let mine: Vec<&Event> =
        events.iter().filter(|e| e.user_id[1..].parse::<usize>().unwrap() % CLIENTS == id).collect();
    let mut rng = StdRng::seed_from_u64(id as u64);
    let mut next = 0;
    while next < mine.len() {
        let size = rng.random_range(1..=5).min(mine.len() - next);
        let batch: Vec<Event> = mine[next..next + size].iter().map(|e| (*e).clone()).collect();
        loop {
            match rpc.ingest(IngestRequest { events: batch.clone() }).await {
                Ok(answer) => {
                    assert_eq!(answer.into_inner().accepted as usize, size);
                    break;
                }
                Err(_) => {
                    retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        next += size;
        acked.fetch_add(size, Ordering::Relaxed);
    }
}

async fn check(grpc: u16, events: &[Event]) {
    let channel: Channel = Endpoint::from_shared(format!("http://127.0.0.1:{grpc}")).unwrap().connect().await.unwrap();
    let mut features = FeaturesClient::new(channel);
    let (users, items) = model(events);
    for (user_id, want) in users {
        let got = features.get_user(GetUserRequest { user_id: user_id.clone() }).await.unwrap().into_inner();
        let got = Expected {
            session: got.session.into_iter().map(|s| (s.item_id, s.r#type)).collect(),
            history: got.history,
            counters: got.counters.into_iter().collect(),
        };
        assert_eq!(got, want, "user {user_id}");
    }
    let ids: Vec<String> = items.keys().cloned().collect();
    let got = features.get_item_counters(GetItemCountersRequest { item_ids: ids }).await.unwrap().into_inner();
    for item in got.items {
        assert_eq!(item.counters.into_iter().collect::<BTreeMap<_, _>>(), items[&item.item_id], "{}", item.item_id);
    }
}

#[test]
fn sigkill_at_random_points_under_load_loses_no_acknowledged_event_and_applies_each_once() {
    reco_runtime::tls::install_crypto_provider();
    let data = tempfile::tempdir().unwrap();
    let (http, grpc) = (free_port().unwrap(), free_port().unwrap());
    let events = Arc::new(events());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (acked, retried) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut server = Server::start(data.path(), http, grpc);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| runtime.spawn(client(id, events.clone(), grpc, acked.clone(), retried.clone())))
        .collect();
    let mut rng = StdRng::seed_from_u64(99);
    let started = Instant::now();
    let mut kills = 0;
    while kills < KILLS && acked.load(Ordering::Relaxed) < EVENTS {
        std::thread::sleep(Duration::from_millis(rng.random_range(30..400)));
        server.kill();
        kills += 1;
        server = Server::start(data.path(), http, grpc);
    }
    for c in clients {
        runtime.block_on(c).unwrap();
    }
    // One more crash right after the last acknowledgement, then the final check.
    server.kill();
    let server = Server::start(data.path(), http, grpc);
    runtime.block_on(check(server.grpc, &events));
    println!(
        "{EVENTS} events, {kills} SIGKILLs under load plus one at the end, {} retried batches, {:.1} s; features equal the model",
        retried.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    assert!(kills >= KILLS / 2, "the load ended before enough kills ({kills}); make it longer");
    assert!(retried.load(Ordering::Relaxed) > 0, "no kill landed on an in-flight request");
    server.kill();

    // The training data from the same log: every positive event once, whatever was retried.
    let out = tempfile::tempdir().unwrap();
    let log = data.path().join("explore/events.jsonl");
    let status = Command::new(env!("CARGO_BIN_EXE_reco"))
        .args(["events", "export", "--log"])
        .arg(&log)
        .arg("--out")
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success());
    let rows = std::fs::read_to_string(out.path().join("interactions.csv")).unwrap().lines().count() - 1;
    let positive = events.iter().filter(|e| e.r#type != EventType::Hide as i32).count();
    assert_eq!(rows, positive);
}
