//! Two `reco-operator` processes against the API test double: only the Lease
//! holder reconciles, and when it stops (SIGTERM releases the Lease) the
//! standby takes over.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::eventually;
use kube::api::{Api, PostParams};
use reco_api::RecommenderPipeline;
use reco_kube_testserver::TestApiServer;
use serde_json::json;

mod common;

/// Longer than the 15 s Lease a standby may have to wait out.
const PATIENCE: Duration = Duration::from_secs(60);

struct Replica {
    identity: &'static str,
    metrics_port: u16,
    process: Child,
}

impl Replica {
    fn start(identity: &'static str, kubeconfig: &Path) -> Self {
        let metrics_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let process = Command::new(env!("CARGO_BIN_EXE_reco-operator"))
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .args([
                "--leader-election=true",
                "--lease-namespace=reco-system",
                &format!("--identity={identity}"),
                &format!("--metrics-addr=127.0.0.1:{metrics_port}"),
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("reco-operator starts");
        Self { identity, metrics_port, process }
    }

    /// Reconciles this replica made, from its own `/metrics`.
    async fn reconciles(&self) -> f64 {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        let Ok(response) = reqwest::get(&url).await else { return 0.0 };
        let text = response.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with("reco_operator_reconciles_total"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.process.id().to_string()]).status();
        let _ = self.process.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn pipeline(name: &str) -> RecommenderPipeline {
    serde_json::from_value(json!({
        "apiVersion": "reco.seed.dev/v1alpha1", "kind": "RecommenderPipeline",
        "metadata": {"name": name}, "spec": {},
    }))
    .unwrap()
}

#[tokio::test]
async fn only_the_lease_holder_reconciles_and_a_standby_takes_over() {
    let server = TestApiServer::start().await.unwrap();
    for crd in reco_operator::crds::crds() {
        server.register_custom_resource(&crd).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig("reco")).unwrap();

    let mut replicas = [Replica::start("replica-a", &kubeconfig), Replica::start("replica-b", &kubeconfig)];
    let holder = eventually("a Lease holder", PATIENCE, || async {
        let lease = server.get_json("coordination.k8s.io", "leases", Some("reco-system"), "reco-operator")?;
        lease["spec"]["holderIdentity"].as_str().filter(|h| !h.is_empty()).map(str::to_owned)
    })
    .await;
    let leader = replicas.iter().position(|r| r.identity == holder).expect("the holder is one of ours");
    let standby = 1 - leader;

    let pipelines: Api<RecommenderPipeline> = Api::namespaced(server.client(), "reco");
    pipelines.create(&PostParams::default(), &pipeline("first")).await.unwrap();
    eventually("the leader reconciles", PATIENCE, || async {
        (replicas[leader].reconciles().await > 0.0).then_some(())
    })
    .await;
    assert_eq!(replicas[standby].reconciles().await, 0.0, "the standby must not reconcile");

    replicas[leader].terminate();
    let standby_identity = replicas[standby].identity;
    eventually("the standby holds the Lease", PATIENCE, || async {
        let lease = server.get_json("coordination.k8s.io", "leases", Some("reco-system"), "reco-operator")?;
        (lease["spec"]["holderIdentity"] == standby_identity).then_some(())
    })
    .await;
    pipelines.create(&PostParams::default(), &pipeline("second")).await.unwrap();
    eventually("the new leader reconciles the new pipeline", PATIENCE, || async {
        let status = server.get_json("reco.seed.dev", "recommenderpipelines", Some("reco"), "second")?;
        status["status"]["observedGeneration"].as_i64().map(|_| ())
    })
    .await;
}
