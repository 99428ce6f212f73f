use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;

use axum::Json;
use axum::http::StatusCode;
use axum::routing::post;

use super::*;

fn user(id: &str, future: &[&str]) -> ReplayUser {
    ReplayUser { id: id.into(), future: future.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>() }
}

fn config(base: Url) -> SimConfig {
    SimConfig {
        base,
        rate: 200.0,
        concurrency: 8,
        seed: 7,
        noise: 0.0,
        page_size: 3,
        context: serde_json::json!({}),
        retries: 0,
    }
}

/// A gateway double: user "bad" gets a 500, everyone else items a, b, c
/// from "v1". Every other answer re-serves the page before it (a cache hit:
/// same request id and token), and a click on an item of a page already
/// clicked is a duplicate, as with the real gateway.
async fn fake_gateway(pages: Arc<AtomicU64>, events: Arc<AtomicU64>) -> SocketAddr {
    let answers = Arc::new(AtomicU64::new(0));
    let recommend = post(move |Json(body): Json<serde_json::Value>| {
        let (answers, pages) = (Arc::clone(&answers), Arc::clone(&pages));
        async move {
            if body["user_id"] == "bad" {
                return Err(StatusCode::INTERNAL_SERVER_ERROR);
            }
            let page = if answers.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
                pages.fetch_add(1, Ordering::SeqCst) + 1
            } else {
                pages.load(Ordering::SeqCst)
            };
            let items: Vec<_> = ["a", "b", "c"]
                .iter()
                .map(|id| serde_json::json!({"item_id": id, "score": 1.0, "source": "x"}))
                .collect();
            let id = format!("r{page}");
            Ok(Json(
                serde_json::json!({"request_id": id, "model_version": "v1", "token": id, "items": items, "degraded": false}),
            ))
        }
    });
    let clicked = Arc::new(Mutex::new(BTreeSet::<(String, String)>::new()));
    let events_route = post(move |Json(body): Json<serde_json::Value>| {
        let (events, clicked) = (Arc::clone(&events), Arc::clone(&clicked));
        async move {
            assert_eq!(body["type"], "click");
            let key = (body["token"].as_str().unwrap_or_default().to_owned(), body["item_id"].to_string());
            let duplicate = !clicked.lock().unwrap().insert(key);
            if !duplicate {
                events.fetch_add(1, Ordering::SeqCst);
            }
            (StatusCode::ACCEPTED, Json(serde_json::json!({"accepted": true, "duplicate": duplicate})))
        }
    });
    let app = axum::Router::new().route("/v1/recommend", recommend).route("/v1/events", events_route);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[test]
fn plans_are_deterministic_given_the_seed() {
    let plans = |seed| (0..200).map(|i| request_plan(seed, i, 50).0).collect::<Vec<_>>();
    assert_eq!(plans(1), plans(1));
    assert_ne!(plans(1), plans(2));
    assert!(plans(1).iter().all(|&u| u < 50));
    // Every user gets drawn eventually.
    let drawn: BTreeSet<_> = (0..5000).map(|i| request_plan(3, i, 50).0).collect();
    assert_eq!(drawn.len(), 50);
}

#[test]
fn clicks_are_the_future_plus_noise() {
    let u = user("u", &["b"]);
    let items: Vec<String> = ["a", "b", "c"].iter().map(|s| (*s).to_owned()).collect();
    let (_, mut rng) = request_plan(1, 1, 1);
    assert_eq!(clicked(&u, &items, 0.0, &mut rng), ["b"]);
    assert_eq!(clicked(&u, &items, 1.0, &mut rng), ["a", "b", "c"]);
    let noisy: usize = (0..2000)
        .map(|i| {
            let (_, mut rng) = request_plan(9, i, 1);
            clicked(&user("u", &[]), &items, 0.1, &mut rng).len()
        })
        .sum();
    // 6000 draws at 10%: 600 ± 5 sd (23).
    assert!((485..=715).contains(&noisy), "{noisy}");
}

#[test]
fn bad_configs_are_rejected() {
    let base: Url = "http://127.0.0.1:9/".parse().unwrap();
    let cases = [
        SimConfig { rate: 0.0, ..config(base.clone()) },
        SimConfig { rate: f64::NAN, ..config(base.clone()) },
        SimConfig { concurrency: 0, ..config(base.clone()) },
        SimConfig { noise: 1.5, ..config(base.clone()) },
        SimConfig { page_size: 0, ..config(base.clone()) },
        SimConfig { page_size: 101, ..config(base.clone()) },
    ];
    for case in cases {
        assert!(case.validate().is_err(), "{case:?}");
    }
    assert!(config(base).validate().is_ok());
}

#[tokio::test]
async fn counts_requests_clicks_and_failures_per_version() {
    let (pages, events) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let addr = fake_gateway(Arc::clone(&pages), Arc::clone(&events)).await;
    let data = Arc::new(ReplayData { users: vec![user("good", &["a", "c"]), user("bad", &["a"])] });
    let sim = Simulator::start(config(format!("http://{addr}/").parse().unwrap()), data).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stats = sim.stop().await;
    let v1 = stats.version("v1");
    let unknown = stats.version(UNKNOWN_VERSION);
    assert!(v1.requests > 10 && unknown.requests > 10, "{stats:?}");
    assert_eq!(v1.failed, 0);
    assert_eq!(unknown.failed, unknown.requests);
    // A re-served page is not shown anew, and its clicks are duplicates.
    let pages = pages.load(Ordering::SeqCst);
    assert!(pages < v1.requests, "{pages} pages for {} requests", v1.requests);
    assert_eq!(v1.impressions, 3 * pages);
    assert_eq!(v1.clicks, 2 * pages);
    assert_eq!(v1.events_failed, 0);
    assert_eq!(events.load(Ordering::SeqCst), v1.clicks);
    assert_eq!(stats.total().requests, v1.requests + unknown.requests);
}

#[tokio::test]
async fn an_unreachable_gateway_counts_every_request_as_failed() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let data = Arc::new(ReplayData { users: vec![user("u", &["a"])] });
    let sim = Simulator::start(config(format!("http://{addr}/").parse().unwrap()), data).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = sim.stop().await;
    let total = stats.total();
    assert!(total.requests > 5, "{stats:?}");
    assert_eq!(total.failed, total.requests);
    assert!(matches!(
        Simulator::start(config("http://127.0.0.1:9/".parse().unwrap()), Arc::new(ReplayData::default())),
        Err(SimError::NoUsers)
    ));
}

/// A gateway that answers every second recommend request with a 503 (a pod
/// going away) and every click with a 400 (refused: never retried).
async fn flaky_gateway(posts: Arc<AtomicU64>) -> SocketAddr {
    let calls = Arc::new(AtomicU64::new(0));
    let recommend = post(move || {
        let calls = Arc::clone(&calls);
        async move {
            if calls.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                return Err(StatusCode::SERVICE_UNAVAILABLE);
            }
            let items = [serde_json::json!({"item_id": "a", "score": 1.0, "source": "x"})];
            let id = format!("r{}", calls.load(Ordering::SeqCst));
            Ok(Json(serde_json::json!({"request_id": id, "model_version": "v1", "token": id, "items": items})))
        }
    });
    let events = post(move || {
        let posts = Arc::clone(&posts);
        async move {
            posts.fetch_add(1, Ordering::SeqCst);
            StatusCode::BAD_REQUEST
        }
    });
    let app = axum::Router::new().route("/v1/recommend", recommend).route("/v1/events", events);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test]
async fn a_retry_covers_a_server_error_but_not_a_refusal() {
    let data = Arc::new(ReplayData { users: vec![user("u", &["a"])] });
    // Concurrency 1: the 503s and successes alternate per request.
    let run = |retries: u32| {
        let data = Arc::clone(&data);
        async move {
            let posts = Arc::new(AtomicU64::new(0));
            let addr = flaky_gateway(Arc::clone(&posts)).await;
            let base = format!("http://{addr}/").parse().unwrap();
            let sim =
                Simulator::start(SimConfig { retries, rate: 50.0, concurrency: 1, ..config(base) }, data).unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            (sim.stop().await.total(), posts.load(Ordering::SeqCst))
        }
    };
    let (without, _) = run(0).await;
    assert!(without.failed > 0 && without.retried == 0, "{without:?}");
    let (with, posts) = run(1).await;
    assert_eq!(with.failed, 0, "{with:?}");
    assert_eq!(with.retried, with.requests, "each request took its retry: {with:?}");
    assert_eq!(with.events_failed, posts, "a 400 is not sent again: {with:?}");
}
