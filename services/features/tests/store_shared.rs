//! One set of behaviour checks, run against both backends: the embedded store and a real Redis.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use reco_features::model::{EventKind, FeatureEvent};
use reco_features::{
    Demographics, EmbeddedStore, FeatureStore, Limits, RedisStore, SeedInteraction, SeedOutcome, SeedUser,
};

const LIMITS: Limits = Limits {
    history_len: 4,
    session_len: 3,
    session_ttl: reco_features::model::DEFAULT_SESSION_TTL,
    state_ttl: reco_features::model::DEFAULT_STATE_TTL,
};

fn ev(user: &str, item: &str, kind: EventKind, at_ms: i64) -> FeatureEvent {
    let dwell_ms = if kind == EventKind::Dwell { 1500 } else { 0 };
    FeatureEvent { user_id: user.into(), item_id: item.into(), kind, at_ms, dwell_ms }
}

/// Runs every check on fresh stores made by `make` (each call gets its own namespace).
async fn behaves<F, Fut>(make: F)
where
    F: Fn(&'static str) -> Fut,
    Fut: Future<Output = Arc<dyn FeatureStore>>,
{
    unknown_users_and_items_are_empty(make("unknown").await).await;
    events_update_session_history_and_counters(make("events").await).await;
    bounds_are_kept(make("bounds").await).await;
    seeding_only_fills_an_empty_store(make("seed").await).await;
    concurrent_events_are_all_counted(make("concurrent").await).await;
    odd_ids_do_not_collide(make("odd").await).await;
}

async fn unknown_users_and_items_are_empty(store: Arc<dyn FeatureStore>) {
    assert!(store.is_empty().await.unwrap());
    assert_eq!(store.get_user("nobody").await.unwrap(), None);
    assert_eq!(store.get_item_counters(&[]).await.unwrap(), Vec::<BTreeMap<String, u64>>::new());
    assert_eq!(store.get_item_counters(&["x".into()]).await.unwrap(), [BTreeMap::new()]);
    store.apply(&[]).await.unwrap();
    assert!(store.is_empty().await.unwrap());
}

async fn events_update_session_history_and_counters(store: Arc<dyn FeatureStore>) {
    store.apply(&[ev("u", "a", EventKind::Click, 1), ev("u", "b", EventKind::Dwell, 2)]).await.unwrap();
    // Read-your-writes: the very next read sees the events.
    let user = store.get_user("u").await.unwrap().expect("user known after an event");
    let session: Vec<_> = user.session.iter().map(|e| (e.item_id.as_str(), e.kind.as_str(), e.at_ms)).collect();
    assert_eq!(session, [("a", "click", 1), ("b", "dwell", 2)]);
    assert_eq!(user.session[1].dwell_ms, 1500);
    assert_eq!(Vec::from(user.history), ["a", "b"]);
    assert_eq!(user.counters, BTreeMap::from([("click".into(), 1), ("dwell".into(), 1)]));
    assert!(!store.is_empty().await.unwrap());

    store.apply(&[ev("u", "c", EventKind::Hide, 3), ev("v", "a", EventKind::Like, 4)]).await.unwrap();
    let user = store.get_user("u").await.unwrap().unwrap();
    assert_eq!(user.session.back().map(|e| (e.item_id.as_str(), e.kind.as_str())), Some(("c", "hide")));
    assert_eq!(Vec::from(user.history), ["a", "b"], "a hidden item is not history");
    let items = store.get_item_counters(&["a".into(), "missing".into(), "c".into()]).await.unwrap();
    assert_eq!(items[0], BTreeMap::from([("click".into(), 1), ("like".into(), 1)]));
    assert!(items[1].is_empty());
    assert_eq!(items[2], BTreeMap::from([("hide".into(), 1)]));
}

async fn bounds_are_kept(store: Arc<dyn FeatureStore>) {
    let events: Vec<_> = ["a", "b", "c", "a", "d", "e"]
        .iter()
        .enumerate()
        .map(|(i, item)| ev("u", item, EventKind::Click, i64::try_from(i).unwrap()))
        .collect();
    store.apply(&events).await.unwrap();
    let user = store.get_user("u").await.unwrap().unwrap();
    let session: Vec<_> = user.session.iter().map(|e| e.item_id.as_str()).collect();
    assert_eq!(session, ["a", "d", "e"]);
    assert_eq!(Vec::from(user.history), ["c", "a", "d", "e"]);
    assert_eq!(user.counters["click"], 6);
}

async fn seeding_only_fills_an_empty_store(store: Arc<dyn FeatureStore>) {
    let users = [
        SeedUser {
            user_id: "1".into(),
            demographics: Demographics {
                age: Some(25),
                gender: "F".into(),
                occupation: "10".into(),
                zip: "48067".into(),
            },
        },
        SeedUser { user_id: "2".into(), demographics: Demographics::default() },
    ];
    let interactions: Vec<_> =
        (0..6).map(|i| SeedInteraction { user_id: "1".into(), item_id: format!("m{i}"), at_ms: 100 - i }).collect();
    let out = reco_features::seed_if_empty(store.as_ref(), &users, &interactions).await.unwrap();
    assert_eq!(out, SeedOutcome::Seeded { users: 2 });
    let one = store.get_user("1").await.unwrap().unwrap();
    assert_eq!(one.demographics, users[0].demographics);
    // Newest 4 by time, oldest first (m5 is the oldest interaction).
    assert_eq!(Vec::from(one.history.clone()), ["m3", "m2", "m1", "m0"]);
    let two = store.get_user("2").await.unwrap().unwrap();
    assert_eq!(two.demographics.age, None);
    assert!(two.history.is_empty());

    // Live events then build on seeded users.
    store.apply(&[ev("1", "new", EventKind::Save, 200)]).await.unwrap();
    let one = store.get_user("1").await.unwrap().unwrap();
    assert_eq!(Vec::from(one.history), ["m2", "m1", "m0", "new"]);
    assert_eq!(one.demographics.zip, "48067");

    let again = [SeedUser { user_id: "3".into(), demographics: Demographics::default() }];
    let out = reco_features::seed_if_empty(store.as_ref(), &again, &[]).await.unwrap();
    assert_eq!(out, SeedOutcome::AlreadyPopulated);
    assert_eq!(store.get_user("3").await.unwrap(), None);
}

async fn concurrent_events_are_all_counted(store: Arc<dyn FeatureStore>) {
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..10 {
                    store.apply(&[ev("hot", &format!("i{t}-{i}"), EventKind::Like, 1)]).await.unwrap();
                    store.get_user("hot").await.unwrap().unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let user = store.get_user("hot").await.unwrap().unwrap();
    assert_eq!(user.counters["like"], 160);
    assert_eq!(user.session.len(), LIMITS.session_len);
    assert_eq!(user.history.len(), LIMITS.history_len);
}

async fn odd_ids_do_not_collide(store: Arc<dyn FeatureStore>) {
    let ids = ["a", "a:hist", "user:cnt:a", "ünï côdé", "a b", "*", "{x}"];
    for (i, id) in ids.iter().enumerate() {
        let events: Vec<_> = (0..=i).map(|_| ev(id, id, EventKind::Click, 1)).collect();
        store.apply(&events).await.unwrap();
    }
    for (i, id) in ids.iter().enumerate() {
        let user = store.get_user(id).await.unwrap().unwrap();
        assert_eq!(user.counters["click"], u64::try_from(i + 1).unwrap(), "user {id:?}");
        let items = store.get_item_counters(&[(*id).to_owned()]).await.unwrap();
        assert_eq!(items[0]["click"], u64::try_from(i + 1).unwrap(), "item {id:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_backend() {
    behaves(|_| async { Arc::new(EmbeddedStore::in_memory(LIMITS)) as Arc<dyn FeatureStore> }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_backend() {
    let Some(server) = common::start_redis().await else { return };
    let url = server.url.clone();
    behaves(|pipeline| {
        let url = url.clone();
        async move { Arc::new(RedisStore::connect(&url, pipeline, LIMITS).await.unwrap()) as Arc<dyn FeatureStore> }
    })
    .await;
}

#[tokio::test]
async fn redis_pipelines_are_namespaced() {
    let Some(server) = common::start_redis().await else { return };
    let a = RedisStore::connect(&server.url, "alpha", LIMITS).await.unwrap();
    let b = RedisStore::connect(&server.url, "beta", LIMITS).await.unwrap();
    a.apply(&[ev("u", "i", EventKind::Click, 1)]).await.unwrap();
    assert!(a.get_user("u").await.unwrap().is_some());
    assert!(b.get_user("u").await.unwrap().is_none());
    assert!(b.is_empty().await.unwrap());
    assert!(b.get_item_counters(&["i".into()]).await.unwrap()[0].is_empty());
}

#[tokio::test]
async fn redis_down_is_an_error_not_a_hang_or_panic() {
    let Some(server) = common::start_redis().await else { return };
    let store = RedisStore::connect(&server.url, "p", LIMITS).await.unwrap();
    drop(server);
    let res = tokio::time::timeout(std::time::Duration::from_secs(30), store.get_user("u")).await;
    assert!(matches!(res, Ok(Err(_))), "expected an error from a stopped server");
}

/// Every key of a user or item carries a TTL, renewed by each event, so Redis forgets idle
/// users instead of growing with every user id it ever saw.
#[tokio::test]
async fn redis_keys_expire_with_idle_users() {
    let Some(server) = common::start_redis().await else { return };
    let limits = Limits {
        session_ttl: std::time::Duration::from_secs(1),
        state_ttl: std::time::Duration::from_secs(2),
        ..LIMITS
    };
    let store = RedisStore::connect(&server.url, "ttl", limits).await.unwrap();
    let users = [SeedUser { user_id: "seeded".into(), demographics: Demographics::default() }];
    reco_features::seed_if_empty(&store, &users, &[]).await.unwrap();
    store.apply(&[ev("u", "i", EventKind::Like, 1)]).await.unwrap();
    let client = redis::Client::open(server.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("reco:ttl:*").query_async(&mut conn).await.unwrap();
    for key in keys.iter().filter(|k| !k.ends_with(":populated")) {
        let ttl: i64 = redis::cmd("TTL").arg(key).query_async(&mut conn).await.unwrap();
        assert!((1..=2).contains(&ttl), "{key} has TTL {ttl}");
    }
    assert!(keys.len() >= 6, "{keys:?}");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(store.get_user("u").await.unwrap(), None, "an idle user is forgotten");
    assert_eq!(store.get_user("seeded").await.unwrap(), None);
    assert!(store.get_item_counters(&["i".into()]).await.unwrap()[0].is_empty());
    assert!(!store.is_empty().await.unwrap(), "a store that was seeded is not seeded again");
}

/// A partition owner's apply: a record read again (a rebalance, a restart from an older
/// committed offset) and an event logged twice (a retry through another replica) change the
/// features once; each partition's applied offset moves with them.
#[tokio::test]
async fn redis_partition_records_apply_once_by_offset_and_id() {
    use reco_features::redis::LoggedRecord;
    let Some(server) = common::start_redis().await else { return };
    let store = RedisStore::connect(&server.url, "owned", LIMITS).await.unwrap();
    let (a, b, c) =
        (ev("u", "a", EventKind::Click, 1), ev("u", "b", EventKind::Like, 2), ev("u", "c", EventKind::Save, 3));
    let record = |offset, event, id| LoggedRecord { offset, event, id };
    let first = [record(0, &a, Some("e0")), record(1, &b, Some("e1"))];
    let done = store.apply_logged(7, &first).await.unwrap();
    assert_eq!((done.applied, done.duplicates), (2, 0));
    assert_eq!(store.applied_offsets(&[7, 8]).await.unwrap(), BTreeMap::from([(7, 2)]));

    // Read again from offset 1, with a new record; then the same event logged again at 3.
    let again = [record(1, &b, Some("e1")), record(2, &c, Some("e2"))];
    let done = store.apply_logged(7, &again).await.unwrap();
    assert_eq!((done.applied, done.duplicates), (1, 0), "offset 1 was applied already");
    let retried = [record(3, &c, Some("e2"))];
    let done = store.apply_logged(7, &retried).await.unwrap();
    assert_eq!((done.applied, done.duplicates), (0, 1), "the same id logged twice");
    assert_eq!(store.applied_offsets(&[7]).await.unwrap(), BTreeMap::from([(7, 4)]));

    let user = store.get_user("u").await.unwrap().unwrap();
    assert_eq!(Vec::from(user.history), ["a", "b", "c"]);
    let once: BTreeMap<String, u64> = [("click", 1), ("like", 1), ("save", 1)].map(|(k, n)| (k.into(), n)).into();
    assert_eq!(user.counters, once);
    assert_eq!(user.session.len(), 3);

    // Another partition keeps its own offset; records without an id are gated by offset only.
    let done = store.apply_logged(8, &[record(5, &a, None), record(6, &a, None)]).await.unwrap();
    assert_eq!((done.applied, done.duplicates), (2, 0));
    assert_eq!(store.applied_offsets(&[7, 8]).await.unwrap(), BTreeMap::from([(7, 4), (8, 7)]));
    assert_eq!(store.get_user("u").await.unwrap().unwrap().counters["click"], 3);
}
