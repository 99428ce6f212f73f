//! Measures a version pod from `podman run` to ready, as the operator renders
//! it: the version uploaded to an S3-protocol server (moto), downloaded and
//! verified by the pod into its cache volume, loaded, indexed (retrieval)
//! and serving. Prints the median of `--runs` fresh pods (each downloads).
//!
//!     cargo run -p reco-node --example time_to_ready -- --version-dir DIR [--component retrieval] [--runs 3]
//!         [--memory-limit 8Gi]    (the pipeline's limit for the pod; the default 2Gi is too small for 1M items)
//!
//! Needs podman, the images (scripts/build-images.sh) and MOTO_SERVER_BIN
//! (eval "$(scripts/env.sh)").

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use reco_api::{ModelVersion, ModelVersionSpec, RecommenderPipeline, RecommenderPipelineSpec};
use reco_artifacts::testing::S3Server;
use reco_node::{Objects, Placement, Podman};
use reco_operator::resources::{self, Component, Defaults};

fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let dir = PathBuf::from(flag("--version-dir").expect("--version-dir DIR (a version written by reco train)"));
    let component = match flag("--component").as_deref() {
        Some("retrieval") => Component::Retrieval,
        _ => Component::Ranking,
    };
    let runs: usize = flag("--runs").map_or(3, |r| r.parse().expect("--runs N"));
    let image = flag("--image").unwrap_or_else(|| "ghcr.io/reco-seed/reco:0.1.0".into());
    let podman = Podman::available().expect("podman");
    podman.ensure_network("reco-test").unwrap();
    let host = podman.network_gateway("reco-test").unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let s3 = runtime.block_on(S3Server::start_on("0.0.0.0")).expect("MOTO_SERVER_BIN");
    let started = Instant::now();
    let digest = runtime.block_on(async {
        s3.bucket("models").await;
        reco_artifacts::upload(&dir, "s3://models/v1", &s3.options()).await.unwrap()
    });
    let upload_s = started.elapsed().as_secs_f64();

    let mut spec = serde_json::json!({"artifacts": {"credentialsSecret": "s3"}});
    if let Some(memory) = flag("--memory-limit") {
        let resources = serde_json::json!({"resources": {"limits": {"cpu": "2", "memory": memory}}});
        spec["retrieval"] = resources.clone();
        spec["ranking"] = resources;
    }
    let spec: RecommenderPipelineSpec = serde_json::from_value(spec).unwrap();
    let mut p = RecommenderPipeline::new("explore", spec);
    p.metadata.namespace = Some("reco".into());
    let mut v = ModelVersion::new(
        "v1",
        ModelVersionSpec {
            pipeline: "explore".into(),
            artifact_uri: "s3://models/v1".into(),
            artifact_digest: Some(digest.to_string()),
            offline_metrics: Default::default(),
            image: None,
        },
    );
    v.metadata.namespace = Some("reco".into());
    let deployment = resources::version_deployment(&p, &v, component, &Defaults { services_image: image });
    let spec = deployment.spec.unwrap().template.spec.unwrap();
    let credentials = Secret {
        string_data: Some(
            s3.env_at(&format!("http://{host}:{}", s3.port)).into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        ),
        ..Default::default()
    };
    let objects = Objects { secrets: BTreeMap::from([("s3".into(), credentials)]), ..Default::default() };

    let (mut ready, mut download) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let root = tempfile::tempdir().unwrap();
        let placement = Placement {
            pod: format!("time-to-ready-{run}"),
            name: format!("time-to-ready-{run}"),
            namespace: "default".into(),
            network: "reco-test".into(),
            aliases: Vec::new(),
            pod_dir: root.path().to_path_buf(),
            claims: BTreeMap::new(),
            api: None,
        };
        let started = Instant::now();
        let pod = podman.start_pod(&spec, &placement, &objects).unwrap();
        let outcome = podman.wait_ready(&pod, Duration::from_secs(1800));
        let elapsed = started.elapsed().as_secs_f64();
        let logs = podman.logs(&pod);
        podman.stop_pod(&pod);
        outcome.unwrap_or_else(|e| panic!("{e}\n{logs}"));
        // The pods log JSON (or text where a terminal is attached): the download's `seconds` field.
        let line = logs.lines().find(|l| l.contains("artifacts downloaded and verified"));
        let seconds = line
            .and_then(|l| l.split("\"seconds\":").nth(1).or_else(|| l.split("seconds=").nth(1)))
            .and_then(|s| s.split([',', ' ', '}']).next())
            .and_then(|s| s.parse::<f64>().ok());
        if seconds.is_none() {
            eprintln!("no download time in the log:\n{logs}");
        }
        eprintln!("run {run}: ready in {elapsed:.2} s, download and verify {seconds:?} s");
        ready.push(elapsed);
        download.extend(seconds);
    }
    let bytes: u64 =
        std::fs::read_dir(&dir).unwrap().flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum();
    println!(
        "{:?} pod, version {} ({:.1} MB): upload {upload_s:.2} s; podman run to ready median {:.2} s of {runs}; download+verify median {:.2} s",
        component,
        dir.display(),
        bytes as f64 / 1e6,
        median(ready),
        if download.is_empty() { f64::NAN } else { median(download) },
    );
}
