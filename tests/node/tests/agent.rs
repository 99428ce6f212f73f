//! The node agent with the operator on genuine API servers: the operator
//! (its binary) renders a pipeline; `reco-node` runs every pod with podman,
//! publishes the Services as DNS names, probes the pods and writes the
//! workloads' status; the gateway serves through the Service names, and a
//! second version's pods start and take mirrored traffic once the operator
//! puts it in shadow (the routing ConfigMap reaches the gateway's volume).
//!
//! Needs a cluster (RECO_REAL_CLUSTER=1 and KUBECONFIG: `make test` starts
//! the genuine servers), podman with the images, and moto; ignored otherwise.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use reco_artifacts::testing::S3Server;
use reco_model::artifacts::write_random_version;
use reco_model::features::Item;
use reco_node::Podman;
use reco_node::agent::{self, AgentConfig};
use serde_json::{Value, json};

const NETWORK: &str = "reco-node-test";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn uploaded(s3: &S3Server, name: &str, seed: i64) -> String {
    let dir = tempfile::tempdir().unwrap();
    let items: Vec<Item> =
        (0..50).map(|i| Item { id: format!("m{i}"), genres: vec!["Drama".into()], ..Default::default() }).collect();
    write_random_version(dir.path(), &items, &["u1".into()], seed).unwrap();
    reco_artifacts::upload(dir.path(), &format!("s3://models/{name}"), &s3.options()).await.unwrap().to_string()
}

fn container_ip(name: &str) -> Option<String> {
    let format = format!("{{{{(index .NetworkSettings.Networks \"{NETWORK}\").IPAddress}}}}");
    let out = Command::new("podman").args(["inspect", "--format", &format, name]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()).filter(|ip| !ip.is_empty())
}

/// Whether every replica of a Deployment is ready, by the status the agent writes.
async fn all_ready(deployments: &Api<Deployment>, name: &str) -> Option<()> {
    let status = deployments.get(name).await.ok()?.status?;
    (status.replicas? > 0 && status.ready_replicas == status.replicas).then_some(())
}

/// Removes the test's containers even when it fails.
struct Containers(String);

impl Drop for Containers {
    fn drop(&mut self) {
        let listed = Command::new("podman").args(["ps", "-aq", "--filter", &format!("name=^{}\\.", self.0)]).output();
        for id in listed.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default().split_whitespace()
        {
            let _ = Command::new("podman").args(["rm", "-f", "-t", "2", id]).output();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a Kubernetes API server (RECO_REAL_CLUSTER=1, KUBECONFIG), podman with the images, and moto"]
async fn the_agent_runs_what_the_operator_renders_and_the_gateway_serves_through_service_names() {
    let Ok(podman) = Podman::available() else { panic!("podman cannot run containers") };
    assert!(
        podman.image_exists("ghcr.io/reco-seed/reco:0.1.0"),
        "build the images: scripts/build-images.sh --profile dev all"
    );
    podman.ensure_network(NETWORK).unwrap();
    let host = podman.network_gateway(NETWORK).unwrap();
    let s3 = S3Server::start_on("0.0.0.0").await.expect("MOTO_SERVER_BIN");
    s3.bucket("models").await;
    let (v1, v2) = (uploaded(&s3, "v1", 1).await, uploaded(&s3, "v2", 2).await);

    reco_runtime::tls::install_crypto_provider();
    let client = Client::try_default().await.expect("KUBECONFIG");
    let ns = format!("reco-node-{:08x}", rand_suffix());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap())
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let env: BTreeMap<String, String> =
        s3.env_at(&format!("http://{host}:{}", s3.port)).into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    let secret = serde_json::from_value(json!({"metadata": {"name": "s3"}, "stringData": env})).unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();

    let _containers = Containers(ns.clone());
    // The node agent, in this process.
    let state = tempfile::tempdir().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = AgentConfig {
        state_dir: state.path().to_path_buf(),
        network: NETWORK.into(),
        namespaces: vec![ns.clone()],
        period: Duration::from_millis(500),
        api_server: None,
        prometheus_targets: None,
    };
    let agent = tokio::spawn(agent::run(client.clone(), config, async move {
        let _ = stopped.await;
    }));
    // The operator, its own binary (built beside this test by the image build).
    let operator_bin = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("reco-operator");
    let _operator = Killed(
        Command::new(&operator_bin)
            .args([
                "--watch-namespaces",
                &ns,
                "--leader-election=false",
                "--metrics-addr=127.0.0.1:0",
                "--log-format=text",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", operator_bin.display())),
    );

    let apply = |kind: &str, object: Value| {
        let (client, ns, kind) = (client.clone(), ns.clone(), kind.to_owned());
        async move {
            let resource = kube::discovery::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
                "reco.seed.dev",
                "v1alpha1",
                &kind,
            ));
            let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client, &ns, &resource);
            let object: kube::api::DynamicObject = serde_json::from_value(object).unwrap();
            api.create(&PostParams::default(), &object).await.unwrap();
        }
    };
    apply(
        "RecommenderPipeline",
        json!({
            "apiVersion": "reco.seed.dev/v1alpha1", "kind": "RecommenderPipeline", "metadata": {"name": "explore"},
            "spec": {"artifacts": {"credentialsSecret": "s3"}, "rollout": {"steps": [{"shadow": {"duration": "1h"}}]}},
        }),
    )
    .await;
    let version = |name: &str, digest: &str| {
        json!({
            "apiVersion": "reco.seed.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": name},
            "spec": {"pipeline": "explore", "artifactUri": format!("s3://models/{name}"), "artifactDigest": digest},
        })
    };
    apply("ModelVersion", version("v1", &v1)).await;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    for name in ["explore-gateway", "explore-retrieval-v1", "explore-ranking-v1"] {
        eventually(&format!("{name} ready (status by reco-node)"), Duration::from_secs(180), || {
            all_ready(&deployments, name)
        })
        .await;
    }
    let gateway = container_ip(&format!("{ns}.explore-gateway-0-gateway")).expect("the gateway pod");
    let http = reqwest::Client::new();
    let recommend = |user: String| {
        let (http, gateway) = (http.clone(), gateway.clone());
        async move {
            let body = json!({"user_id": user, "page_size": 5});
            let r = http.post(format!("http://{gateway}:8080/v1/recommend")).json(&body).send().await.ok()?;
            (r.status() == 200).then_some(r.json::<Value>().await.ok()?)
        }
    };
    let page =
        eventually("a page from v1 through the Service names", Duration::from_secs(60), || recommend("u1".into()))
            .await;
    assert_eq!(page["model_version"], "v1", "{page}");

    // v2: the operator puts it in shadow; its pods start, the gateway mirrors to them.
    apply("ModelVersion", version("v2", &v2)).await;
    for name in ["explore-retrieval-v2", "explore-ranking-v2"] {
        eventually(&format!("{name} ready"), Duration::from_secs(180), || all_ready(&deployments, name)).await;
    }
    let ranking_v2 = container_ip(&format!("{ns}.explore-ranking-v2-0-ranking")).expect("v2's ranking pod");
    eventually("mirrored requests reach v2's ranking pod", Duration::from_secs(60), || async {
        for user in 0..10 {
            recommend(format!("user-{user}")).await;
        }
        let metrics = http.get(format!("http://{ranking_v2}:8080/metrics")).send().await.ok()?.text().await.ok()?;
        let scored =
            metrics.lines().any(|l| l.starts_with("reco_ranking_rank_duration_seconds_count") && !l.ends_with(" 0"));
        scored.then_some(())
    })
    .await;

    let _ = stop.send(());
    agent.await.unwrap().unwrap();
    namespaces.delete(&ns, &DeleteParams::default()).await.unwrap();
}

fn rand_suffix() -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    nanos ^ std::process::id()
}
