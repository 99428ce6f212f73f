//! The gateway over real HTTP (and gRPC) against in-test doubles of the backend services.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Behaviour, CATEGORIES, Options, PIPELINE, VersionPlan, item_id, routing, series, start, version_series};
use reco_contracts::routing::{user_bucket, user_group};
use reco_contracts::{RoutedVersion, RoutingTable, route_for_user};
use reco_core::token::{Claims, ItemDigest, TokenSigner, UserDigest};
use serde_json::{Value, json};

fn ids(body: &Value) -> Vec<String> {
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["item_id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn routing_split_honours_weights_and_is_consistent_per_user() {
    let gateway =
        start(Options { routing: Some(routing(&[("v2", 20), ("v1", 80)], None)), ..Default::default() }).await;
    let table = RoutingTable {
        pipeline: PIPELINE.into(),
        salt: PIPELINE.into(),
        versions: vec![
            RoutedVersion { name: "v2".into(), weight: 20 },
            RoutedVersion { name: "v1".into(), weight: 80 },
        ],
        shadow: None,
    };
    let mut on_v2 = 0;
    for user in 0..400 {
        let user = format!("user-{user}");
        let first = gateway.recommend(&user).await;
        let version = first["model_version"].as_str().expect("version").to_owned();
        assert_eq!(Some(version.as_str()), route_for_user(&table, &user), "{user}");
        assert!(ids(&first).len() == 10 && first["items"][0]["source"] == version.as_str(), "{first}");
        let again = gateway.recommend(&user).await;
        assert_eq!(again["model_version"], first["model_version"], "{user} moved");
        on_v2 += usize::from(version == "v2");
    }
    // 20% of 400 users, within about 4 standard deviations (±32).
    assert!((48..=112).contains(&on_v2), "{on_v2} of 400 on v2");
}

/// The page monitors: each page a version produces reports where its items came from, how far
/// apart their embeddings are and how many categories it spans; a dwell time counts for the
/// version that served the item.
#[tokio::test]
async fn pages_report_their_sources_diversity_and_dwell_per_version() {
    let embedded = VersionPlan { embed_by_category: true, ..Default::default() };
    let gateway =
        start(Options { versions: vec![("v1", embedded), ("v2", VersionPlan::default())], ..Default::default() }).await;
    let (mut distance, mut bits) = (0.0, 0.0);
    let users = 4;
    let mut first = None;
    for user in 0..users {
        let page = gateway.recommend(&format!("u{user}")).await;
        let mut per_category = [0usize; CATEGORIES];
        for id in ids(&page) {
            per_category[id["item-".len()..].parse::<usize>().expect("item-NN") % CATEGORIES] += 1;
        }
        // One-hot embeddings by category: distance 0 within a category, 1 across.
        let n = per_category.iter().sum::<usize>() as f64;
        let same: usize = per_category.iter().map(|k| k * k.saturating_sub(1) / 2).sum();
        distance += 1.0 - same as f64 / (n * (n - 1.0) / 2.0);
        bits -= per_category.iter().filter(|&&k| k > 0).map(|&k| k as f64 / n).map(|p| p * p.log2()).sum::<f64>();
        first.get_or_insert(page);
    }
    let v1 = |name: &str| version_series(name, "v1");
    assert_eq!(gateway.metric(&v1("reco_page_intra_list_diversity_count")).await, f64::from(users));
    let got = gateway.metric(&v1("reco_page_intra_list_diversity_sum")).await;
    assert!((got - distance).abs() < 1e-9 && distance > 0.0, "{got} vs {distance}");
    let got = gateway.metric(&v1("reco_page_category_entropy_bits_sum")).await;
    assert!((got - bits).abs() < 1e-9 && bits > 0.0, "{got} vs {bits}");
    // The doubles name their source after their version, not a known source: labelled `other`.
    let items =
        series("reco_page_items_total", &[("pipeline", PIPELINE), ("model_version", "v1"), ("source", "other")]);
    assert_eq!(gateway.metric(&items).await, f64::from(users) * 10.0);

    let page = first.expect("a page");
    let (token, item) = (page["token"].as_str().expect("token"), ids(&page)[0].clone());
    let body = json!({"token": token, "user_id": "u0", "item_id": item, "type": "dwell", "dwell_ms": 1500});
    assert_eq!(gateway.post("/v1/events", &body).await.0, 202);
    assert_eq!(gateway.post("/v1/events", &body).await.0, 202, "a retry is acknowledged");
    assert_eq!(gateway.metric(&v1("reco_event_dwell_seconds_count")).await, 1.0, "and counted once");
    assert_eq!(gateway.metric(&v1("reco_event_dwell_seconds_sum")).await, 1.5);
}

#[tokio::test]
async fn hot_reload_switches_versions_and_bad_files_keep_the_last_good_one() {
    let gateway = start(Options::default()).await;
    assert_eq!(gateway.recommend("u").await["model_version"], "v1");
    gateway.write_routing(&routing(&[("v2", 100)], None));
    gateway
        .eventually(Duration::from_secs(3), "switch to v2", || async {
            gateway.recommend("u").await["model_version"] == "v2"
        })
        .await;
    let errors = series("reco_routing_reload_errors_total", &[("pipeline", PIPELINE)]);
    let bad_files = [
        "versions: [unterminated".to_owned(),
        routing(&[("v3", 100)], None),
        routing(&[("v1", 50), ("v2", 40)], None),
        routing(&[("v1", 100)], Some("v9")),
        routing(&[("v1", 100)], None).replace(PIPELINE, "another-pipeline"),
    ];
    for (count, bad) in bad_files.iter().enumerate() {
        gateway.write_routing(bad);
        let expected = (count + 1) as f64;
        gateway
            .eventually(Duration::from_secs(3), "reload error counted", || async {
                gateway.metric(&errors).await == expected
            })
            .await;
        assert_eq!(gateway.recommend("u").await["model_version"], "v2", "after {bad:?}");
        assert_eq!(gateway.get("/readyz").await.0, 200);
    }
    // Unchanged bad content is counted once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gateway.metric(&errors).await, bad_files.len() as f64);
    gateway.write_routing(&routing(&[("v1", 100)], None));
    gateway
        .eventually(Duration::from_secs(3), "back to v1", || async {
            gateway.recommend("u").await["model_version"] == "v1"
        })
        .await;
}

#[tokio::test]
async fn not_ready_until_a_valid_table_loads() {
    let gateway = start(Options { routing: Some("pipeline: explore\n".into()), ..Default::default() }).await;
    assert_eq!(gateway.get("/readyz").await.0, 503);
    assert_eq!(gateway.get("/healthz").await.0, 200);
    let body = gateway.recommend("u").await;
    assert_eq!((body["degraded"].as_bool(), body["model_version"].as_str()), (Some(true), Some("")), "{body}");
    gateway.write_routing(&routing(&[("v1", 100)], None));
    gateway.wait_ready().await;
    assert_eq!(gateway.recommend("u").await["model_version"], "v1");
}

#[tokio::test]
async fn without_a_routing_file_the_single_version_serves() {
    let options = Options { versions: vec![("v7", VersionPlan::default())], routing: None, ..Default::default() };
    let gateway = start(options).await;
    gateway.wait_ready().await;
    assert_eq!(gateway.recommend("anyone").await["model_version"], "v7");
}

#[tokio::test]
async fn tokens_round_trip_and_clicks_count_for_the_tokens_version() {
    let gateway = start(Options::default()).await;
    let served = gateway.recommend("u1").await;
    assert_eq!(served["model_version"], "v1");
    let token = served["token"].as_str().expect("token").to_owned();
    let claims = TokenSigner::new(common::KEY.as_bytes())
        .expect("key")
        .verify(&token, SystemTime::now().duration_since(UNIX_EPOCH).expect("time").as_secs(), Duration::from_secs(60))
        .expect("our token verifies");
    assert_eq!((claims.pipeline.as_str(), claims.model_version.as_str()), (PIPELINE, "v1"));
    assert_eq!(claims.request_id, served["request_id"].as_str().expect("id"));

    // The table moves the user to v2; the click still belongs to v1, which served it.
    gateway.write_routing(&routing(&[("v2", 100)], None));
    gateway
        .eventually(Duration::from_secs(3), "switch", || async {
            gateway.recommend("u1").await["model_version"] == "v2"
        })
        .await;
    let (status, body) = gateway.event(&token, "u1", &item_id(3), "click").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(gateway.version_total("reco_clicks_total", "v1").await, 1.0);
    assert_eq!(gateway.version_total("reco_clicks_total", "v2").await, 0.0);
    let received = gateway.events.received.lock().expect("lock").clone();
    assert_eq!(received.len(), 1);
    assert_eq!(
        (received[0].model_version.as_str(), received[0].request_id.as_str()),
        ("v1", claims.request_id.as_str())
    );
    // A like is accepted but is not a click.
    assert_eq!(gateway.event(&token, "u1", &item_id(4), "like").await.0, 202);
    assert_eq!(gateway.version_total("reco_clicks_total", "v1").await, 1.0);
}

#[tokio::test]
async fn forged_expired_and_garbled_tokens_are_400_and_counted() {
    let gateway = start(Options::default()).await;
    let token = gateway.recommend("u1").await["token"].as_str().expect("token").to_owned();
    let mut forged = token.clone().into_bytes();
    forged[10] = if forged[10] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).expect("ascii");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("time").as_secs();
    let signer = TokenSigner::new(common::KEY.as_bytes()).expect("key");
    let claims = |pipeline: &str, issued_at: u64| Claims {
        pipeline: pipeline.into(),
        model_version: "v1".into(),
        request_id: "r".into(),
        issued_at,
        user: UserDigest::of("u1"),
        user_group: 0,
        items: vec![ItemDigest::of(&item_id(1))],
    };
    let expired = signer.sign(&claims(PIPELINE, now - 2 * 86_400)).expect("fits");
    let other_pipeline = signer.sign(&claims("other", now)).expect("fits");
    let other_key = TokenSigner::new(&[7; 32]).expect("key").sign(&claims(PIPELINE, now)).expect("fits");
    let cases = [
        (forged, "bad_signature"),
        (other_key, "bad_signature"),
        (expired, "expired"),
        (other_pipeline, "wrong_pipeline"),
        ("!!not a token!!".to_owned(), "not_base64"),
        ("A".repeat(5_000), "too_long"),
        ("AQID".to_owned(), "malformed"),
    ];
    for (token, reason) in &cases {
        let (status, body) = gateway.event(token, "u1", &item_id(1), "click").await;
        assert_eq!(status, 400, "{reason}: {body}");
        assert_eq!(body["error"]["code"], "invalid_token", "{reason}: {body}");
    }
    assert_eq!(gateway.metric(&rejects("bad_signature")).await, 2.0);
    for reason in ["expired", "wrong_pipeline", "not_base64", "too_long"] {
        assert_eq!(gateway.metric(&rejects(reason)).await, 1.0, "{reason}");
    }
    assert_eq!(gateway.version_total("reco_clicks_total", "v1").await, 0.0);
    assert!(gateway.events.received.lock().expect("lock").is_empty(), "nothing forwarded");
}

fn rejects(reason: &str) -> String {
    series("reco_token_rejects_total", &[("pipeline", PIPELINE), ("reason", reason)])
}

/// One token, 200 user ids: only the user it was served to gets a click counted.
#[tokio::test]
async fn a_token_replayed_under_200_user_ids_counts_one_click() {
    let gateway = start(Options::default()).await;
    let token = gateway.recommend("owner").await["token"].as_str().expect("token").to_owned();
    let users: Vec<String> = std::iter::once("owner".to_owned()).chain((1..200).map(|i| format!("user-{i}"))).collect();
    let mut accepted = 0;
    for user in &users {
        let (status, body) = gateway.event(&token, user, &item_id(2), "click").await;
        if user == "owner" {
            assert_eq!(status, 202, "{body}");
            accepted += 1;
        } else {
            assert_eq!(status, 403, "{user}: {body}");
            assert_eq!(body["error"]["code"], "wrong_user", "{body}");
            let message = body["error"]["message"].as_str().expect("message");
            assert!(message.starts_with("wrong_user: ") && message.contains(user.as_str()), "{message}");
        }
    }
    assert_eq!(accepted, 1);
    assert_eq!(gateway.version_total("reco_clicks_total", "v1").await, 1.0);
    assert_eq!(gateway.metric(&rejects("wrong_user")).await, 199.0);
    assert_eq!(gateway.events.received.lock().expect("lock").len(), 1, "only the owner's click was forwarded");
}

#[tokio::test]
async fn a_click_on_an_item_not_on_the_page_is_refused() {
    let gateway = start(Options::default()).await;
    let page = gateway.recommend("u").await;
    let token = page["token"].as_str().expect("token").to_owned();
    let off_page = item_id(25);
    assert!(!ids(&page).contains(&off_page), "{page}");
    let (status, body) = gateway.event(&token, "u", &off_page, "click").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "item_not_on_page");
    assert!(body["error"]["message"].as_str().expect("message").contains(&off_page), "{body}");
    assert_eq!(gateway.metric(&rejects("item_not_on_page")).await, 1.0);
    assert_eq!(gateway.version_total("reco_clicks_total", "v1").await, 0.0);
    assert!(gateway.events.received.lock().expect("lock").is_empty(), "nothing forwarded");
    // Every item of the page is covered.
    for item in ids(&page) {
        assert_eq!(gateway.event(&token, "u", &item, "click").await.0, 202, "{item}");
    }
    assert_eq!(gateway.version_total("reco_clicks_total", "v1").await, 10.0);
}

fn duplicates(event_type: &str) -> String {
    series(
        "reco_duplicate_events_total",
        &[("pipeline", PIPELINE), ("model_version", "v1"), ("event_type", event_type)],
    )
}

fn accepted(duplicate: bool) -> (u16, Value) {
    (202, json!({"accepted": true, "duplicate": duplicate}))
}

#[tokio::test]
async fn the_same_click_sent_twice_counts_once() {
    let gateway = start(Options::default()).await;
    let token = gateway.recommend("u").await["token"].as_str().expect("token").to_owned();
    assert_eq!(gateway.event(&token, "u", &item_id(3), "click").await, accepted(false));
    assert_eq!(gateway.event(&token, "u", &item_id(3), "click").await, accepted(true));
    assert_eq!(gateway.version_total("reco_clicks_total", "v1").await, 1.0);
    assert_eq!(gateway.metric(&duplicates("click")).await, 1.0);
    assert_eq!(gateway.events.received.lock().expect("lock").len(), 1, "the duplicate is not forwarded");
    // Another item, or another type of event on the same item, is a new event.
    assert_eq!(gateway.event(&token, "u", &item_id(4), "click").await, accepted(false));
    assert_eq!(gateway.event(&token, "u", &item_id(3), "like").await, accepted(false));
    assert_eq!(gateway.version_total("reco_clicks_total", "v1").await, 2.0);
    assert_eq!(gateway.metric(&duplicates("like")).await, 0.0);
    assert_eq!(gateway.events.received.lock().expect("lock").len(), 3);
}

/// Two replicas sharing one Redis: a click replayed on the other replica is not counted again,
/// and without Redis events are refused rather than risk a double count.
#[tokio::test]
async fn two_gateways_sharing_redis_count_a_replayed_click_once() {
    let Some(redis) = common::redis_server::start_redis().await else { return };
    let options = || Options {
        flags: vec![format!("--dedup-redis-url={}", redis.url), "--events-timeout-ms=500".into()],
        ..Default::default()
    };
    let (a, b) = (start(options()).await, start(options()).await);
    let token = a.recommend("u").await["token"].as_str().expect("token").to_owned();
    assert_eq!(a.event(&token, "u", &item_id(3), "click").await, accepted(false));
    assert_eq!(b.event(&token, "u", &item_id(3), "click").await, accepted(true));
    assert_eq!(a.event(&token, "u", &item_id(3), "click").await, accepted(true));
    assert_eq!(a.version_total("reco_clicks_total", "v1").await, 1.0);
    assert_eq!(b.version_total("reco_clicks_total", "v1").await, 0.0);
    assert_eq!(b.metric(&duplicates("click")).await, 1.0);
    assert!(b.events.received.lock().expect("lock").is_empty(), "the replay is not forwarded");
    // Another item of the page counts, on either replica.
    assert_eq!(b.event(&token, "u", &item_id(4), "click").await, accepted(false));
    assert_eq!(b.version_total("reco_clicks_total", "v1").await, 1.0);

    drop(redis);
    let (status, body) = a.event(&token, "u", &item_id(5), "click").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "dedup_unavailable", "{body}");
    assert_eq!(a.version_total("reco_clicks_total", "v1").await, 1.0);
    assert_eq!(a.events.received.lock().expect("lock").len(), 1, "the refused event is not forwarded");
}

/// A cache hit is the page already served: same request id and token, no new impressions, and
/// a click through either answer is the same event.
#[tokio::test]
async fn a_cache_hit_serves_the_same_token_and_adds_no_impressions() {
    let gateway = start(Options::default()).await;
    let first = gateway.recommend("fan").await;
    let again = gateway.recommend("fan").await;
    let hits = series("reco_cache_requests_total", &[("cache", "recommendations"), ("result", "hit")]);
    assert_eq!(gateway.metric(&hits).await, 1.0);
    assert_eq!(again, first, "the cached page is served whole");
    assert_eq!(gateway.version_total("reco_impressions_total", "v1").await, 10.0);
    assert_eq!(gateway.metric(&version_series("reco_recommend_requests_total", "v1")).await, 2.0);
    let (token, again_token) = (first["token"].as_str().expect("token"), again["token"].as_str().expect("token"));
    assert_eq!(gateway.event(token, "fan", &item_id(3), "click").await, accepted(false));
    assert_eq!(gateway.event(again_token, "fan", &item_id(3), "click").await, accepted(true));
    assert_eq!(gateway.version_total("reco_clicks_total", "v1").await, 1.0);
    // The click invalidated the cache: the next page is new, with its own token and impressions.
    let next = gateway.recommend("fan").await;
    assert_ne!(next["request_id"], first["request_id"]);
    assert_eq!(gateway.version_total("reco_impressions_total", "v1").await, 20.0);
}

fn group_of(salt: &str, user: &str) -> String {
    user_group(user_bucket(salt, user)).to_string()
}

fn grouped_series(name: &str, version: &str, group: &str) -> String {
    series(name, &[("pipeline", PIPELINE), ("model_version", version), ("user_group", group)])
}

/// Impressions and clicks carry the user's group; a click keeps the group its page was served
/// in, even after the routing salt (and so the user's group) changed.
#[tokio::test]
async fn clicks_carry_the_user_group_of_the_serving_user() {
    let gateway = start(Options::default()).await;
    let new_salt = "reshuffled";
    let user = (0..100)
        .map(|i| format!("u{i}"))
        .find(|user| group_of(PIPELINE, user) != group_of(new_salt, user))
        .expect("a user whose group the new salt changes");
    let (served_group, later_group) = (group_of(PIPELINE, &user), group_of(new_salt, &user));
    let token = gateway.recommend(&user).await["token"].as_str().expect("token").to_owned();
    assert_eq!(gateway.metric(&grouped_series("reco_impressions_total", "v1", &served_group)).await, 10.0);

    let reshuffled = routing(&[("v2", 100)], None).replace(&format!("salt: {PIPELINE}"), &format!("salt: {new_salt}"));
    gateway.write_routing(&reshuffled);
    gateway
        .eventually(Duration::from_secs(3), "the new table", || async {
            gateway.recommend("probe").await["model_version"] == "v2"
        })
        .await;
    assert_eq!(gateway.event(&token, &user, &item_id(3), "click").await, accepted(false));
    assert_eq!(gateway.metric(&grouped_series("reco_clicks_total", "v1", &served_group)).await, 1.0);
    assert_eq!(gateway.metric(&grouped_series("reco_clicks_total", "v1", &later_group)).await, 0.0);
    // A page served under the new salt is in the user's new group.
    gateway.recommend(&user).await;
    assert_eq!(gateway.metric(&grouped_series("reco_impressions_total", "v2", &later_group)).await, 10.0);
}

async fn degraded_within_deadline(plan: VersionPlan, reason: &str) {
    let gateway = start(Options { versions: vec![("v1", plan)], ..Default::default() }).await;
    gateway.wait_ready().await;
    // The fallback refresh (an anonymous cold request) succeeds; wait until its items are in.
    gateway
        .eventually(Duration::from_secs(5), "fallback items", || async {
            !ids(&gateway.recommend("warmup").await).is_empty()
        })
        .await;
    for user in ["a", "b", "c"] {
        let started = Instant::now();
        let body = gateway.recommend(user).await;
        let elapsed = started.elapsed();
        eprintln!("{reason}: degraded answer after {elapsed:?}");
        // Deadline 100 ms plus slack for a loaded 2-core test machine.
        assert!(elapsed < Duration::from_millis(250), "{reason}: answered after {elapsed:?}");
        assert_eq!(body["degraded"], true, "{body}");
        assert_eq!(body["model_version"], "v1");
        assert_eq!(ids(&body), (0..10).map(item_id).collect::<Vec<_>>(), "popular fallback items");
    }
    let fallbacks = series("reco_fallbacks_total", &[("pipeline", PIPELINE), ("reason", reason)]);
    assert!(gateway.metric(&fallbacks).await >= 3.0);
    assert!(gateway.metric(&version_series("reco_recommend_errors_total", "v1")).await >= 3.0);
    assert!(gateway.metric(&version_series("reco_recommend_requests_total", "v1")).await >= 3.0);
}

#[tokio::test]
async fn slow_retrieval_degrades_to_fallback_within_the_deadline() {
    let plan = VersionPlan { retrieval: Behaviour::Sleep(Duration::from_secs(2)), ..Default::default() };
    degraded_within_deadline(plan, "deadline").await;
}

#[tokio::test]
async fn failing_retrieval_degrades_to_fallback() {
    degraded_within_deadline(VersionPlan { retrieval: Behaviour::Fail, ..Default::default() }, "retrieval").await;
}

#[tokio::test]
async fn failing_ranking_degrades_to_fallback() {
    degraded_within_deadline(VersionPlan { ranking: Behaviour::Fail, ..Default::default() }, "ranking").await;
}

/// A feature-store outage hits every version alike: pages degrade to
/// fallback items, but neither the served version nor the shadow is charged
/// an error, so the outage cannot roll a candidate back.
#[tokio::test]
async fn a_shared_feature_store_outage_is_charged_to_no_version() {
    let options = Options { routing: Some(routing(&[("v1", 100)], Some("v2"))), ..Default::default() };
    let gateway = start(options).await;
    gateway.wait_ready().await;
    gateway.features.down.store(true, std::sync::atomic::Ordering::Relaxed);
    for user in ["o1", "o2", "o3"] {
        let body = gateway.recommend(user).await;
        assert_eq!((body["model_version"].as_str(), body["degraded"].as_bool()), (Some("v1"), Some(true)));
    }
    let fallbacks = format!("reco_fallbacks_total{{pipeline=\"{PIPELINE}\",reason=\"features\"}}");
    assert_eq!(gateway.metric(&fallbacks).await, 3.0);
    gateway
        .eventually(Duration::from_secs(5), "the shadow tried all three", || async {
            gateway.metric(&version_series("reco_shadow_requests_total", "v2")).await == 3.0
        })
        .await;
    assert_eq!(gateway.metric(&version_series("reco_recommend_requests_total", "v1")).await, 3.0);
    assert_eq!(gateway.metric(&version_series("reco_recommend_errors_total", "v1")).await, 0.0);
    assert_eq!(gateway.metric(&version_series("reco_shadow_errors_total", "v2")).await, 0.0);
}

/// A feature store slow past the deadline is lateness of a dependency every version shares: the
/// page degrades, but neither the served version nor the shadow is charged an error.
#[tokio::test]
async fn features_slow_past_the_deadline_charges_no_version() {
    let options = Options {
        routing: Some(routing(&[("v1", 100)], Some("v2"))),
        flags: vec!["--shadow-timeout-ms=300".into()],
        ..Default::default()
    };
    let gateway = start(options).await;
    gateway.wait_ready().await;
    gateway.features.delay_ms.store(1_000, std::sync::atomic::Ordering::Relaxed);
    gateway
        .eventually(Duration::from_secs(5), "fallback items", || async {
            !ids(&gateway.recommend("warmup").await).is_empty()
        })
        .await;
    for user in ["s1", "s2", "s3"] {
        let started = Instant::now();
        let body = gateway.recommend(user).await;
        assert!(started.elapsed() < Duration::from_millis(250), "answered after {:?}", started.elapsed());
        assert_eq!((body["model_version"].as_str(), body["degraded"].as_bool()), (Some("v1"), Some(true)));
    }
    let late = series("reco_fallbacks_total", &[("pipeline", PIPELINE), ("reason", "deadline")]);
    let requests = gateway.metric(&version_series("reco_recommend_requests_total", "v1")).await;
    assert!(requests >= 3.0, "{requests} requests");
    assert_eq!(gateway.metric(&late).await, requests, "every request ran late");
    assert_eq!(gateway.metric(&version_series("reco_recommend_errors_total", "v1")).await, 0.0);
    // The shadow read the features itself (the served page had none) and ran late there too.
    gateway
        .eventually(Duration::from_secs(5), "every shadow request done", || async {
            let done = gateway.metric(&version_series("reco_shadow_duration_seconds_count", "v2")).await;
            done == requests && gateway.metric(&version_series("reco_shadow_requests_total", "v2")).await == done
        })
        .await;
    assert_eq!(gateway.metric(&version_series("reco_shadow_errors_total", "v2")).await, 0.0);
}

#[tokio::test]
async fn shadow_never_delays_the_response_and_records_overlap() {
    let slow = VersionPlan { ranking: Behaviour::Sleep(Duration::from_millis(500)), ..Default::default() };
    let options = Options {
        versions: vec![("v1", VersionPlan::default()), ("v2", slow)],
        routing: Some(routing(&[("v1", 100)], Some("v2"))),
        ..Default::default()
    };
    let gateway = start(options).await;
    gateway.wait_ready().await;
    for user in ["s1", "s2"] {
        let started = Instant::now();
        let body = gateway.recommend(user).await;
        let elapsed = started.elapsed();
        eprintln!("answer with a 500 ms shadow after {elapsed:?}");
        assert!(elapsed < Duration::from_millis(250), "shadow delayed the answer: {elapsed:?}");
        assert_eq!((body["model_version"].as_str(), body["degraded"].as_bool()), (Some("v1"), Some(false)));
    }
    let overlap_count = format!("{}_count{{pipeline=\"{PIPELINE}\",model_version=\"v2\"}}", "reco_shadow_overlap");
    gateway
        .eventually(Duration::from_secs(5), "shadow overlap recorded", || async {
            gateway.metric(&overlap_count).await == 2.0
        })
        .await;
    // v1 serves items 0..9, v2 prefers 29..20: no overlap.
    let overlap_sum = overlap_count.replace("_count", "_sum");
    assert_eq!(gateway.metric(&overlap_sum).await, 0.0);
    let latency_sum = version_series("reco_shadow_duration_seconds_sum", "v2");
    assert!(gateway.metric(&latency_sum).await >= 1.0, "two shadow calls of 500 ms");
    assert_eq!(gateway.metric(&version_series("reco_shadow_requests_total", "v2")).await, 2.0);
    assert_eq!(gateway.metric(&version_series("reco_shadow_errors_total", "v2")).await, 0.0);
    assert_eq!(gateway.version_total("reco_impressions_total", "v2").await, 0.0);
    assert_eq!(gateway.version_total("reco_impressions_total", "v1").await, 20.0);
}

#[tokio::test]
async fn saturated_shadow_requests_are_dropped_and_counted() {
    let slow = VersionPlan { ranking: Behaviour::Sleep(Duration::from_millis(500)), ..Default::default() };
    let options = Options {
        versions: vec![("v1", VersionPlan::default()), ("v2", slow)],
        routing: Some(routing(&[("v1", 100)], Some("v2"))),
        flags: vec!["--shadow-concurrency=1".into()],
    };
    let gateway = start(options).await;
    gateway.wait_ready().await;
    for user in ["a", "b", "c"] {
        gateway.recommend(user).await;
    }
    assert_eq!(gateway.metric(&version_series("reco_shadow_dropped_total", "v2")).await, 2.0);
}

#[tokio::test]
async fn an_event_invalidates_the_users_cached_page() {
    let gateway = start(Options::default()).await;
    let first = gateway.recommend("fan").await;
    let top = ids(&first)[0].clone();
    assert_eq!(ids(&gateway.recommend("fan").await), ids(&first));
    let hits = series("reco_cache_requests_total", &[("cache", "recommendations"), ("result", "hit")]);
    assert_eq!(gateway.metric(&hits).await, 1.0);
    let token = first["token"].as_str().expect("token");
    let (status, body) = gateway.event(token, "fan", &top, "hide").await;
    assert_eq!(status, 202, "{body}");
    let after = gateway.recommend("fan").await;
    assert!(!ids(&after).contains(&top), "{top} still served after hiding it: {after}");
    assert_eq!(gateway.metric(&hits).await, 1.0, "served from the features, not the cache");
    // Another user's page stays cached.
    gateway.recommend("other").await;
    gateway.recommend("other").await;
    assert_eq!(gateway.metric(&hits).await, 2.0);
}

/// An item the events service does not know can only come with a token whose page held it (a
/// catalogue that changed since serving): the events service's refusal reaches the client.
#[tokio::test]
async fn unknown_items_are_refused_with_the_events_services_message() {
    let gateway = start(Options::default()).await;
    let claims = Claims {
        pipeline: PIPELINE.into(),
        model_version: "v1".into(),
        request_id: "r".into(),
        issued_at: SystemTime::now().duration_since(UNIX_EPOCH).expect("time").as_secs(),
        user: UserDigest::of("u"),
        user_group: 0,
        items: vec![ItemDigest::of("no-such-item")],
    };
    let token = TokenSigner::new(common::KEY.as_bytes()).expect("key").sign(&claims).expect("fits");
    let (status, body) = gateway.event(&token, "u", "no-such-item", "click").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_event");
    assert_eq!(body["error"]["message"], "unknown item id \"no-such-item\"");
    assert_eq!(gateway.version_total("reco_clicks_total", "v1").await, 0.0);
}

#[tokio::test]
async fn metrics_count_impressions_requests_latency_and_stages() {
    let gateway = start(Options::default()).await;
    gateway.recommend("m").await;
    assert_eq!(gateway.version_total("reco_impressions_total", "v1").await, 10.0);
    assert_eq!(gateway.metric(&version_series("reco_recommend_requests_total", "v1")).await, 1.0);
    assert_eq!(gateway.metric(&version_series("reco_recommend_duration_seconds_count", "v1")).await, 1.0);
    for stage in ["features", "retrieval", "ranking", "rerank"] {
        let series = format!(
            "reco_stage_duration_seconds_count{{pipeline=\"{PIPELINE}\",model_version=\"v1\",stage=\"{stage}\"}}"
        );
        assert_eq!(gateway.metric(&series).await, 1.0, "{stage}");
    }
    let (_, text) = gateway.get("/metrics").await;
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text");
}

/// name, path, content type, body, expected status, error code, a phrase of the message.
type Case<'a> = (&'a str, &'a str, Option<&'a str>, Vec<u8>, u16, &'a str, &'a str);

/// Every malformed request gets a 4xx with `{"error": {"code", "message"}}` naming the problem.
#[tokio::test]
async fn bad_input_table() {
    let gateway = start(Options { flags: vec!["--body-limit-bytes=2048".into()], ..Default::default() }).await;
    let token = gateway.recommend("u").await["token"].as_str().expect("token").to_owned();
    let long = "x".repeat(257);
    let json = Some("application/json");
    let event = |patch: Value| {
        let mut body = json!({"token": token, "user_id": "u", "item_id": item_id(1), "type": "click"});
        for (key, value) in patch.as_object().expect("object") {
            if value.is_null() {
                body.as_object_mut().expect("object").remove(key);
            } else {
                body[key] = value.clone();
            }
        }
        body.to_string().into_bytes()
    };
    let r = "/v1/recommend";
    let e = "/v1/events";
    let cases: Vec<Case> = vec![
        ("malformed JSON", r, json, b"{\"user_id\": ".to_vec(), 400, "malformed_json", "not valid JSON"),
        ("not JSON at all", r, json, b"hello".to_vec(), 400, "malformed_json", "not valid JSON"),
        ("empty body", r, json, Vec::new(), 400, "malformed_json", "EOF"),
        ("array body", r, json, br#"["u"]"#.to_vec(), 400, "invalid_body", "JSON object"),
        ("wrong type", r, json, br#"{"user_id": 5}"#.to_vec(), 400, "invalid_body", "invalid type"),
        ("unknown field", r, json, br#"{"user_id": "u", "x": 1}"#.to_vec(), 400, "invalid_body", "unknown field `x`"),
        (
            "unknown context field",
            r,
            json,
            br#"{"user_id": "u", "context": {"surface": "home"}}"#.to_vec(),
            400,
            "invalid_body",
            "unknown field `surface`",
        ),
        ("missing user", r, json, br#"{"page_size": 5}"#.to_vec(), 400, "invalid_body", "missing field `user_id`"),
        ("empty user", r, json, br#"{"user_id": ""}"#.to_vec(), 400, "invalid_argument", "user_id must not be empty"),
        (
            "long user",
            r,
            json,
            format!(r#"{{"user_id": "{long}"}}"#).into_bytes(),
            400,
            "invalid_argument",
            "user_id is 257 bytes",
        ),
        (
            "control character in user",
            r,
            json,
            json!({"user_id": "u\u{7}1"}).to_string().into_bytes(),
            400,
            "invalid_argument",
            "user_id contains control characters",
        ),
        ("page 0", r, json, br#"{"user_id": "u", "page_size": 0}"#.to_vec(), 400, "invalid_argument", "page_size"),
        ("page 101", r, json, br#"{"user_id": "u", "page_size": 101}"#.to_vec(), 400, "invalid_argument", "got 101"),
        ("page -1", r, json, br#"{"user_id": "u", "page_size": -1}"#.to_vec(), 400, "invalid_body", "invalid value"),
        ("page float", r, json, br#"{"user_id": "u", "page_size": 1.5}"#.to_vec(), 400, "invalid_body", "invalid type"),
        (
            "negative time",
            r,
            json,
            br#"{"user_id": "u", "context": {"now_ms": -5}}"#.to_vec(),
            400,
            "invalid_argument",
            "now_ms",
        ),
        (
            "too many content types",
            r,
            json,
            json!({"user_id": "u", "context": {"content_types": vec!["a"; 33]}}).to_string().into_bytes(),
            400,
            "invalid_argument",
            "context.content_types has 33 entries",
        ),
        (
            "attribute value type",
            r,
            json,
            br#"{"user_id": "u", "context": {"attributes": {"a": 1}}}"#.to_vec(),
            400,
            "invalid_body",
            "invalid type",
        ),
        (
            "oversized body",
            r,
            json,
            json!({"user_id": "x".repeat(4096)}).to_string().into_bytes(),
            413,
            "body_too_large",
            "length limit",
        ),
        (
            "no content type",
            r,
            None,
            br#"{"user_id": "u"}"#.to_vec(),
            415,
            "unsupported_media_type",
            "application/json",
        ),
        (
            "text content type",
            r,
            Some("text/plain"),
            br#"{"user_id": "u"}"#.to_vec(),
            415,
            "unsupported_media_type",
            "text/plain",
        ),
        ("event missing token", e, json, event(json!({"token": null})), 400, "invalid_body", "missing field `token`"),
        ("event empty token", e, json, event(json!({"token": ""})), 400, "invalid_argument", "token must not be empty"),
        (
            "event empty item",
            e,
            json,
            event(json!({"item_id": ""})),
            400,
            "invalid_argument",
            "item_id must not be empty",
        ),
        ("event long item", e, json, event(json!({"item_id": long})), 400, "invalid_argument", "item_id is 257 bytes"),
        (
            "event empty user",
            e,
            json,
            event(json!({"user_id": ""})),
            400,
            "invalid_argument",
            "user_id must not be empty",
        ),
        (
            "event control character in user",
            e,
            json,
            event(json!({"user_id": "u\n"})),
            400,
            "invalid_argument",
            "user_id contains control characters",
        ),
        ("event bad type", e, json, event(json!({"type": "purchase"})), 400, "invalid_argument", "\"purchase\""),
        ("event type number", e, json, event(json!({"type": 1})), 400, "invalid_body", "invalid type"),
        ("dwell without ms", e, json, event(json!({"type": "dwell"})), 400, "invalid_argument", "dwell_ms"),
        (
            "dwell negative",
            e,
            json,
            event(json!({"type": "dwell", "dwell_ms": -1})),
            400,
            "invalid_body",
            "invalid value",
        ),
        ("event unknown field", e, json, event(json!({"extra": true})), 400, "invalid_body", "unknown field `extra`"),
        ("garbled token", e, json, event(json!({"token": "%%%"})), 400, "invalid_token", "base64"),
        ("unknown route", "/v1/nothing", json, b"{}".to_vec(), 404, "not_found", "/v1/nothing"),
    ];
    for (name, path, content_type, body, status, code, message) in cases {
        let (got, text) = gateway.post_raw(path, content_type, body).await;
        let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{name}: not JSON: {text:?}"));
        assert_eq!(got, status, "{name}: {body}");
        assert_eq!(body["error"]["code"], code, "{name}: {body}");
        let got_message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(got_message.contains(message), "{name}: {got_message:?} does not mention {message:?}");
    }
    let response = gateway.client.get(format!("{}/v1/recommend", gateway.base)).send().await.expect("sent");
    assert_eq!(response.status().as_u16(), 405);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "method_not_allowed");
    // A dwell with its duration is fine.
    assert_eq!(gateway.post_raw(e, json, event(json!({"type": "dwell", "dwell_ms": 1500}))).await.0, 202);
    // Bad input is the client's: no version was charged an error for any of it.
    let series = |name: &str| format!("{name}{{pipeline=\"{PIPELINE}\",model_version=\"v1\"}}");
    assert!(gateway.metric(&series("reco_recommend_requests_total")).await >= 1.0, "the token's page was served");
    assert_eq!(gateway.metric(&series("reco_recommend_errors_total")).await, 0.0);
}

#[tokio::test]
async fn grpc_face_serves_the_same_path_and_refuses_bad_input() {
    use reco_proto::gateway_client::GatewayClient;
    use reco_proto::{EventType, RecommendRequest, RecordEventRequest};

    let gateway = start(Options::default()).await;
    let mut client = GatewayClient::connect(format!("http://{}", gateway.grpc)).await.expect("connect");
    let page = client
        .recommend(RecommendRequest { user_id: "g".into(), page_size: 0, context: None })
        .await
        .expect("recommend")
        .into_inner();
    assert_eq!((page.model_version.as_str(), page.items.len(), page.degraded), ("v1", 20, false));
    let error = client
        .recommend(RecommendRequest { user_id: String::new(), page_size: 5, context: None })
        .await
        .expect_err("empty user");
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(error.message().contains("user_id"), "{error:?}");
    let error = client
        .recommend(RecommendRequest { user_id: "g".into(), page_size: 500, context: None })
        .await
        .expect_err("page too large");
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    let event = |token: &str, kind: EventType| RecordEventRequest {
        token: token.into(),
        user_id: "g".into(),
        item_id: item_id(2),
        r#type: kind.into(),
        dwell_ms: 0,
    };
    client.record_event(event(&page.token, EventType::Click)).await.expect("click accepted");
    assert_eq!(gateway.version_total("reco_clicks_total", "v1").await, 1.0);
    let error = client.record_event(event("forged", EventType::Click)).await.expect_err("forged");
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    let another_user = RecordEventRequest { user_id: "h".into(), ..event(&page.token, EventType::Like) };
    let error = client.record_event(another_user).await.expect_err("another user");
    assert_eq!(error.code(), tonic::Code::PermissionDenied);
    assert!(error.message().starts_with("wrong_user"), "{error:?}");
    let off_page = RecordEventRequest { item_id: item_id(29), ..event(&page.token, EventType::Like) };
    let error = client.record_event(off_page).await.expect_err("not on the page");
    assert_eq!(error.code(), tonic::Code::PermissionDenied);
    assert!(error.message().starts_with("item_not_on_page"), "{error:?}");
    let error = client.record_event(event(&page.token, EventType::Unspecified)).await.expect_err("no type");
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
}
