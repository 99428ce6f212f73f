//! `reco standalone` as a real process on loopback, every service in it
//! real (embedded feature store and event log, qdrant-edge, tch models):
//! what a client sees through the HTTP API. The model directory has the
//! real architecture with random weights (`write_random_version`); these
//! tests check behaviour, never quality.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reco_demo::stack::free_port;
use reco_model::artifacts::write_random_version;
use reco_model::features::Item;
use serde_json::{Value, json};

struct Standalone {
    child: Child,
    url: String,
    client: reqwest::blocking::Client,
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn catalogue() -> Vec<Item> {
    (0..60)
        .map(|i| Item {
            id: format!("m{i}"),
            title: Some(format!("Movie number {i}")),
            year: Some(1980 + i % 20),
            genres: vec![["Drama", "Comedy", "Action", "Horror"][i as usize % 4].to_owned()],
        })
        .collect()
}

fn start(models: &Path) -> Standalone {
    reco_runtime::tls::install_crypto_provider();
    let (http, grpc) = (free_port().unwrap(), free_port().unwrap());
    let child = Command::new(env!("CARGO_BIN_EXE_reco"))
        .args(["standalone", "--models"])
        .arg(models)
        .args(["--http", &format!("127.0.0.1:{http}"), "--grpc", &format!("127.0.0.1:{grpc}")])
        .args(["--token-key", "0123456789abcdef0123456789abcdef-test-key"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("reco standalone starts");
    // A fresh connection per request: the server may close one after refusing a body.
    let client = reqwest::blocking::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let server = Standalone { child, url: format!("http://127.0.0.1:{http}"), client };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = server.client.get(format!("{}/readyz", server.url)).send().is_ok_and(|r| r.status().is_success());
        if ready {
            return server;
        }
        assert!(Instant::now() < deadline, "reco standalone not ready after 120 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Standalone {
    fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    fn recommend(&self, user: &str, page_size: u32) -> Value {
        let (status, body) = self.post("/v1/recommend", &json!({"user_id": user, "page_size": page_size}).to_string());
        assert_eq!(status, 200, "{body}");
        body
    }
}

fn item_ids(page: &Value) -> Vec<String> {
    page["items"].as_array().unwrap().iter().map(|i| i["item_id"].as_str().unwrap().to_owned()).collect()
}

fn model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let users: Vec<String> = (1..=20).map(|u| u.to_string()).collect();
    write_random_version(&dir.path().join("v1"), &catalogue(), &users, 3).unwrap();
    dir
}

#[test]
fn a_click_shapes_the_very_next_recommendation_and_metrics_count_it() {
    let models = model_dir();
    let server = start(models.path());
    let first = server.recommend("7", 10);
    assert_eq!(first["model_version"], "v1");
    assert_eq!(first["degraded"], false, "{first}");
    let ids = item_ids(&first);
    assert_eq!(ids.len(), 10, "{first}");
    let clicked = &ids[0];

    let event = json!({"token": first["token"], "user_id": "7", "item_id": clicked, "type": "click"});
    let (status, body) = server.post("/v1/events", &event.to_string());
    assert_eq!(status, 202, "{body}");

    // The clicked item is now in the user's session history: the very next
    // call (no waiting) excludes it and the user tower sees the click.
    let next = server.recommend("7", 10);
    assert!(!item_ids(&next).contains(clicked), "clicked {clicked} served again: {next}");

    let metrics = server.client.get(format!("{}/metrics", server.url)).send().unwrap().text().unwrap();
    // Summed over the user groups (every group of a routed version is exported, from 0).
    let total = |name: &str| -> f64 {
        let lines = metrics.lines().filter(|l| l.starts_with(name) && l.contains("model_version=\"v1\""));
        lines.filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    };
    assert_eq!(total("reco_impressions_total{"), 20.0, "{metrics}");
    assert_eq!(total("reco_clicks_total{"), 1.0, "{metrics}");
}

#[test]
fn bad_requests_get_json_errors_that_name_the_problem() {
    let models = model_dir();
    let server = start(models.path());
    let page = server.recommend("3", 5);
    let token = page["token"].as_str().unwrap().to_owned();
    let item = item_ids(&page)[0].clone();
    let cases = [
        ("/v1/recommend", "{not json".to_owned(), "json"),
        ("/v1/recommend", json!({"user_id": 5}).to_string(), "user_id"),
        ("/v1/recommend", json!({"user_id": "5", "page_size": 0}).to_string(), "page_size"),
        ("/v1/recommend", json!({"user_id": "5", "page_size": 101}).to_string(), "page_size"),
        ("/v1/recommend", json!({"user_id": "5", "colour": "red"}).to_string(), "colour"),
        ("/v1/recommend", json!({"user_id": ""}).to_string(), "user_id"),
        (
            "/v1/events",
            json!({"token": "forged", "user_id": "3", "item_id": item, "type": "click"}).to_string(),
            "token",
        ),
        (
            "/v1/events",
            json!({"token": token, "user_id": "3", "item_id": "no-such-item", "type": "click"}).to_string(),
            "item",
        ),
        (
            "/v1/events",
            json!({"token": token, "user_id": "3", "item_id": item, "type": "purchase"}).to_string(),
            "type",
        ),
    ];
    for (path, body, names) in cases {
        let (status, reply) = server.post(path, &body);
        assert!((400..500).contains(&status), "{path} {body}: {status} {reply}");
        let message = reply["error"]["message"].as_str().unwrap_or_default().to_lowercase();
        assert!(message.contains(names), "{path} {body}: error should name {names:?}: {reply}");
    }
    // An oversized body is refused with 413 before it is read in full; the
    // server may then close the connection while the client still writes,
    // which the client sees as a transport error. Neither may be anything
    // but a refusal, and at least one answer must be the 413.
    let huge = json!({"user_id": "x".repeat(200_000)}).to_string();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let sent = server
            .client
            .post(format!("{}/v1/recommend", server.url))
            .header("content-type", "application/json")
            .body(huge.clone())
            .send();
        if let Ok(response) = sent {
            statuses.push(response.status().as_u16());
        }
    }
    assert!(statuses.contains(&413) && statuses.iter().all(|&s| s == 413), "oversized body answers: {statuses:?}");
    // Nothing above broke the server.
    assert_eq!(server.recommend("3", 5)["degraded"], false);
}

#[test]
fn unknown_users_get_cold_start_items() {
    let models = model_dir();
    let server = start(models.path());
    let page = server.recommend("never-seen-before", 8);
    assert_eq!(item_ids(&page).len(), 8, "{page}");
    assert_eq!(page["degraded"], false, "{page}");
}

#[test]
fn serves_a_catalogue_grown_by_synthetic_catalog() {
    let dir = model_dir();
    let grown = dir.path().join("grown");
    let status = Command::new(env!("CARGO_BIN_EXE_reco"))
        .args(["synthetic-catalog", "--items", "400", "--quiet", "--from"])
        .arg(dir.path().join("v1"))
        .arg("--out")
        .arg(grown.join("v1"))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    // 340 of the 400 items were never trained on: retrieval and ranking serve them by content embedding.
    let server = start(&grown);
    let page = server.recommend("7", 50);
    assert_eq!(page["degraded"], false, "{page}");
    let ids = item_ids(&page);
    assert_eq!(ids.len(), 50, "{page}");
    assert!(ids.iter().any(|id| id.starts_with("synthetic-")), "no synthetic item served: {page}");
}
