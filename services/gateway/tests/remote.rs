//! `reco serve gateway` wiring: backends reached over gRPC through the remote adapters, versions
//! from the endpoints file, both files hot-reloaded.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use common::{Behaviour, CatalogueRetrieval, MemoryEvents, MemoryFeatures, PIPELINE, PassThroughRanking, routing};
use prometheus_client::registry::Registry;
use reco_gateway::{GatewayArgs, Metrics, remote_backends};
use reco_proto::events_server::EventsServer;
use reco_proto::features_server::FeaturesServer;
use reco_proto::ranking_server::RankingServer;
use reco_proto::retrieval_server::RetrievalServer;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: GatewayArgs,
}

/// Serves one version's doubles over gRPC; returns its URL.
async fn version_server(version: &str, cancel: &CancellationToken) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tonic::transport::Server::builder()
        .add_service(RetrievalServer::new(CatalogueRetrieval { version: version.into(), behaviour: Behaviour::Normal }))
        .add_service(RankingServer::new(PassThroughRanking {
            version: version.into(),
            behaviour: Behaviour::Normal,
            embed_by_category: false,
        }))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            cancel.clone().cancelled_owned(),
        );
    tokio::spawn(server);
    url
}

fn endpoints(versions: &[(&str, &str)]) -> String {
    versions.iter().map(|(version, url)| format!("{version}:\n  retrieval: {url}\n  ranking: {url}\n")).collect()
}

async fn recommend(client: &reqwest::Client, base: &str, user: &str) -> Value {
    let response = client
        .post(format!("{base}/v1/recommend"))
        .json(&json!({"user_id": user, "page_size": 5}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.expect("JSON")
}

#[tokio::test]
async fn serve_mode_reaches_every_backend_over_grpc_and_reloads_endpoints() {
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let features = MemoryFeatures::default();
    let events = MemoryEvents { features: features.clone(), received: Arc::default() };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let features_url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(FeaturesServer::new(features.clone()))
            .add_service(EventsServer::new(events.clone()))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                cancel.clone().cancelled_owned(),
            ),
    );
    let v1 = version_server("v1", &cancel).await;
    let v2 = version_server("v2", &cancel).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let routing_path = dir.path().join("routing.yaml");
    let endpoints_path = dir.path().join("endpoints.yaml");
    std::fs::write(&routing_path, routing(&[("v1", 100)], None)).expect("write");
    std::fs::write(&endpoints_path, endpoints(&[("v1", &v1)])).expect("write");
    let args = Cli::try_parse_from([
        "gateway".to_owned(),
        format!("--pipeline={PIPELINE}"),
        format!("--routing-file={}", routing_path.display()),
        format!("--endpoints-file={}", endpoints_path.display()),
        format!("--features-url={features_url}"),
        format!("--token-key={}", common::KEY),
        "--reload-interval-ms=100".to_owned(),
        "--deadline-ms=2000".to_owned(),
    ])
    .expect("flags")
    .args;
    let backends = remote_backends(&args).expect("backends");
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", http.local_addr().expect("addr"));
    tokio::spawn(reco_gateway::serve_on(
        http,
        grpc,
        args,
        backends,
        metrics,
        Arc::new(registry),
        cancel.clone().cancelled_owned(),
    ));
    let client = common::http_client();

    let page = recommend(&client, &base, "r1").await;
    assert_eq!((page["model_version"].as_str(), page["degraded"].as_bool()), (Some("v1"), Some(false)), "{page}");
    assert_eq!(page["items"][0]["source"], "v1");
    let response = client
        .post(format!("{base}/v1/events"))
        .json(&json!({"token": page["token"], "user_id": "r1", "item_id": common::item_id(0), "type": "click"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 202);
    assert_eq!(features.users.lock().expect("lock")["r1"].history, [common::item_id(0)]);

    // Routing to v2 before the endpoints know it is refused; once both files agree, v2 serves.
    std::fs::write(&routing_path, routing(&[("v2", 100)], None)).expect("write");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(recommend(&client, &base, "r2").await["model_version"], "v1");
    std::fs::write(&endpoints_path, endpoints(&[("v1", &v1), ("v2", &v2)])).expect("write");
    let started = Instant::now();
    loop {
        let page = recommend(&client, &base, "r2").await;
        if page["model_version"] == "v2" {
            assert_eq!(page["items"][0]["source"], "v2");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(3), "v2 never served: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn serve_mode_needs_features_url_and_endpoints_file() {
    let args = Cli::try_parse_from(["gateway", "--pipeline=p"]).expect("flags").args;
    let error = remote_backends(&args).expect_err("no features url").to_string();
    assert!(error.contains("--features-url"), "{error}");
}
