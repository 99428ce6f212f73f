//! Every pod the operator renders for a pipeline with two versions, run
//! with podman from the images `scripts/build-images.sh` builds, as a
//! kubelet would run it (see the crate's docs for what the stand-in leaves
//! out): command, args, env from a Secret, Secret and ConfigMap files,
//! emptyDir and PVC volumes, user, read-only root and limits as rendered.
//! Then: every pod starts and turns ready, serves its ports, writes nothing
//! outside its volumes; the gateway serves pages from both versions through
//! the Service names; and a version whose artifact is substituted or
//! missing stays unready, alive, with the reason in its log.
//!
//! Skipped, saying why, where podman cannot run or the images are not
//! built (`make test` builds them).

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PodTemplateSpec, Secret};
use reco_api::{ModelVersion, ModelVersionSpec, RecommenderPipeline, RecommenderPipelineSpec};
use reco_artifacts::testing::S3Server;
use reco_contracts::routing::{RoutedVersion, RoutingTable};
use reco_model::artifacts::write_random_version;
use reco_model::features::Item;
use reco_node::{Objects, Placement, Podman, RunningPod};
use reco_operator::resources::{self, Component, Defaults};
use serde_json::{Value, json};

const SERVICES_IMAGE: &str = "ghcr.io/reco-seed/reco:0.1.0";
const OPERATOR_IMAGE: &str = "ghcr.io/reco-seed/reco-operator:0.1.0";
const NETWORK: &str = "reco-test";
const NAMESPACE: &str = "reco";

fn podman_with_images() -> Option<Podman> {
    let podman = match Podman::available() {
        Ok(podman) => podman,
        Err(why) => {
            eprintln!("skipped: podman cannot run containers here: {why}");
            return None;
        }
    };
    for image in [SERVICES_IMAGE, OPERATOR_IMAGE] {
        if !podman.image_exists(image) {
            eprintln!("skipped: image {image} is not built (scripts/build-images.sh --profile dev all)");
            return None;
        }
    }
    Some(podman)
}

#[test]
fn each_image_answers_help_and_the_services_image_loads_libtorch() {
    let Some(_podman) = podman_with_images() else { return };
    for (image, args, expect) in [
        (OPERATOR_IMAGE, vec!["--help"], "Reconciles reco RecommenderPipelines"),
        (SERVICES_IMAGE, vec!["--help"], "recommendation platform for Kubernetes"),
        // libtorch is a dynamic dependency of `reco`: a missing library fails before main.
        (SERVICES_IMAGE, vec!["serve", "ranking", "--help"], "Candidate scoring of one model version"),
    ] {
        let out = std::process::Command::new("podman")
            .args(["run", "--rm", "--read-only", "--network", "none", image])
            .args(&args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(expect),
            "{image} {args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn catalogue() -> Vec<Item> {
    (0..50).map(|i| Item { id: format!("m{i}"), genres: vec!["Drama".into()], ..Default::default() }).collect()
}

/// A random-weight version uploaded to `s3://models/<name>`; its digest.
async fn uploaded(s3: &S3Server, name: &str, seed: i64) -> String {
    let dir = tempfile::tempdir().unwrap();
    write_random_version(dir.path(), &catalogue(), &["u1".into(), "u2".into()], seed).unwrap();
    reco_artifacts::upload(dir.path(), &format!("s3://models/{name}"), &s3.options()).await.unwrap().to_string()
}

fn version(name: &str, uri: &str, digest: &str) -> ModelVersion {
    let mut v = ModelVersion::new(
        name,
        ModelVersionSpec {
            pipeline: "explore".into(),
            artifact_uri: uri.into(),
            artifact_digest: Some(digest.into()),
            offline_metrics: Default::default(),
            image: None,
        },
    );
    v.metadata.namespace = Some(NAMESPACE.into());
    v
}

/// Where the pods of one rendered workload run: its Service's DNS names, its pod directory.
fn placement(root: &Path, pod: &str, service: &str) -> Placement {
    Placement {
        pod: pod.to_owned(),
        name: pod.to_owned(),
        namespace: NAMESPACE.to_owned(),
        network: NETWORK.to_owned(),
        aliases: vec![service.to_owned(), format!("{service}.{NAMESPACE}.svc")],
        pod_dir: root.join(pod),
        claims: BTreeMap::new(),
        api: None,
    }
}

struct Pods<'a> {
    podman: &'a Podman,
    running: Vec<RunningPod>,
}

impl Drop for Pods<'_> {
    fn drop(&mut self) {
        for pod in &self.running {
            self.podman.stop_pod(pod);
        }
    }
}

impl Pods<'_> {
    fn start(&mut self, template: &PodTemplateSpec, placement: &Placement, objects: &Objects) -> RunningPod {
        let spec = template.spec.as_ref().unwrap();
        let pod = self.podman.start_pod(spec, placement, objects).unwrap_or_else(|e| panic!("{}: {e}", placement.pod));
        self.running.push(pod.clone());
        pod
    }
}

fn post(url: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::blocking::Client::new().post(url).json(body).send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

#[test]
fn every_rendered_pod_runs_serves_and_refuses_a_bad_artifact_saying_why() {
    let Some(podman) = podman_with_images() else { return };
    podman.ensure_network(NETWORK).unwrap();
    let host = podman.network_gateway(NETWORK).unwrap();
    // The S3 server and the uploads are async; the pods are driven with blocking calls.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(s3) = runtime.block_on(S3Server::start_on("0.0.0.0")) else { return };
    let (v1_digest, v2_digest) = runtime.block_on(async {
        s3.bucket("models").await;
        (uploaded(&s3, "v1", 1).await, uploaded(&s3, "v2", 2).await)
    });

    let spec: RecommenderPipelineSpec = serde_json::from_value(json!({
        "artifacts": {"credentialsSecret": "s3-credentials"},
        "gateway": {"replicas": 1},
    }))
    .unwrap();
    let mut p = RecommenderPipeline::new("explore", spec);
    p.metadata.namespace = Some(NAMESPACE.into());
    p.metadata.uid = Some("uid-1".into());
    let defaults = Defaults { services_image: SERVICES_IMAGE.into() };
    let versions = [
        version("v1", "s3://models/v1", &v1_digest),
        version("v2", "s3://models/v2", &v2_digest),
        // v2's artifacts under a ModelVersion that names v1's digest: a substituted artifact.
        version("v3", "s3://models/v2", &v1_digest),
        version("v4", "s3://models/missing", &v1_digest),
    ];

    // The objects the pods' volumes and env name, as the operator renders them.
    let credentials = Secret {
        string_data: Some(
            s3.env_at(&format!("http://{host}:{}", s3.port)).into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        ),
        ..Default::default()
    };
    let token = resources::default_token_secret(&p, || "0123456789abcdef0123456789abcdef-pod-test".into()).unwrap();
    let routing = RoutingTable {
        pipeline: "explore".into(),
        salt: "s".into(),
        versions: vec![
            RoutedVersion { name: "v1".into(), weight: 50 },
            RoutedVersion { name: "v2".into(), weight: 50 },
        ],
        shadow: None,
    };
    let routing_cm = resources::routing_configmap(&p, &routing, &["v1", "v2"]);
    let objects = Objects {
        secrets: BTreeMap::from([("s3-credentials".into(), credentials), (resources::token_secret_name(&p), token)]),
        config_maps: BTreeMap::from([(resources::routing_configmap_name("explore"), routing_cm)]),
    };

    let root = tempfile::tempdir().unwrap();
    let mut pods = Pods { podman: &podman, running: Vec::new() };
    let ready = |pod: &RunningPod, within: u64| {
        let took = podman.wait_ready(pod, Duration::from_secs(within));
        took.unwrap_or_else(|e| panic!("{}: {e}\n{}", pod.name, podman.logs(pod)))
    };

    // features: a StatefulSet whose claim template becomes a host directory.
    let features = resources::features_statefulset(&p, &defaults);
    let sts_name = features.metadata.name.clone().unwrap();
    let claim =
        features.spec.as_ref().unwrap().volume_claim_templates.as_ref().unwrap()[0].metadata.name.clone().unwrap();
    let mut template = features.spec.as_ref().unwrap().template.clone();
    // The StatefulSet controller's part: pod 0's claim `<template>-<sts>-0` as a volume.
    let claim_name = format!("{claim}-{sts_name}-0");
    template.spec.as_mut().unwrap().volumes.get_or_insert_default().push(k8s_openapi::api::core::v1::Volume {
        name: claim.clone(),
        persistent_volume_claim: Some(k8s_openapi::api::core::v1::PersistentVolumeClaimVolumeSource {
            claim_name: claim_name.clone(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let mut at = placement(root.path(), &format!("{sts_name}-0"), &resources::features_service_name("explore"));
    at.claims.insert(claim_name.clone(), root.path().join("claims").join(&claim_name));
    let features_pod = pods.start(&template, &at, &objects);
    let mut timings = vec![("features", ready(&features_pod, 60))];

    let mut version_pods = BTreeMap::new();
    for v in &versions {
        for component in [Component::Retrieval, Component::Ranking] {
            let d = resources::version_deployment(&p, v, component, &defaults);
            let name = d.metadata.name.clone().unwrap();
            let pod = pods.start(
                &d.spec.as_ref().unwrap().template,
                &placement(root.path(), &format!("{name}-0"), &name),
                &objects,
            );
            version_pods.insert((v.metadata.name.clone().unwrap(), component.as_str()), pod);
        }
    }
    for version in ["v1", "v2"] {
        for component in ["retrieval", "ranking"] {
            let pod = &version_pods[&(version.to_owned(), component)];
            timings.push((component, ready(pod, 120)));
        }
    }
    let gateway = resources::gateway_deployment(&p, &defaults);
    let gateway_service = resources::gateway_service_name(&p);
    let gateway_pod = pods.start(
        &gateway.spec.as_ref().unwrap().template,
        &placement(root.path(), "gateway-0", &gateway_service),
        &objects,
    );
    timings.push(("gateway", ready(&gateway_pod, 60)));
    eprintln!("time to ready: {timings:?}");

    // Pages from both versions through the Service names; a click lands in the features' volume.
    let url = format!("http://{}:8080", gateway_pod.ip);
    let mut served = std::collections::BTreeSet::new();
    for user in 0..40 {
        let (status, page) =
            post(&format!("{url}/v1/recommend"), &json!({"user_id": format!("user-{user}"), "page_size": 5}));
        assert_eq!(status, 200, "{page}\n{}", podman.logs(&gateway_pod));
        served.insert(page["model_version"].as_str().unwrap().to_owned());
        if user == 0 {
            let item = page["items"][0]["item_id"].clone();
            let event = json!({"token": page["token"], "user_id": "user-0", "item_id": item, "type": "click"});
            let (status, body) = post(&format!("{url}/v1/events"), &event);
            assert_eq!(status, 202, "{body}");
        }
    }
    assert_eq!(served, ["v1", "v2"].map(String::from).into(), "both routed versions serve");
    let claim_dir = root.path().join("claims").join(&claim_name);
    let written: Vec<_> = std::fs::read_dir(&claim_dir).unwrap().flatten().collect();
    assert!(!written.is_empty(), "the features pod writes its event log on its claim");

    // Every serving pod: its ports, its user, its limits, nothing written outside its volumes.
    let serving: Vec<&RunningPod> = std::iter::once(&features_pod)
        .chain(["v1", "v2"].iter().flat_map(|v| ["retrieval", "ranking"].map(|c| &version_pods[&(v.to_string(), c)])))
        .chain(std::iter::once(&gateway_pod))
        .collect();
    for pod in &serving {
        for port in [8080, 50051] {
            assert!(
                TcpStream::connect_timeout(&format!("{}:{port}", pod.ip).parse().unwrap(), Duration::from_secs(2))
                    .is_ok(),
                "{} :{port}",
                pod.name
            );
        }
        let metrics = reqwest::blocking::get(format!("http://{}:8080/metrics", pod.ip)).unwrap();
        assert_eq!(metrics.status(), 200, "{}", pod.name);
        assert_eq!(podman.inspect(pod, "{{.Config.User}}").unwrap(), "65532:65532", "{}", pod.name);
        assert_eq!(podman.inspect(pod, "{{.HostConfig.ReadonlyRootfs}}").unwrap(), "true", "{}", pod.name);
        assert_ne!(podman.inspect(pod, "{{.HostConfig.Memory}}").unwrap(), "0", "{}: memory limit", pod.name);
        let changes = podman.root_changes(pod).unwrap();
        assert!(changes.is_empty(), "{} wrote outside its volumes: {changes:?}", pod.name);
    }

    // Substituted (v3) and missing (v4) artifacts: alive, unready, saying why.
    let deadline = Instant::now() + Duration::from_secs(20);
    for (version, reason) in [
        ("v3", format!("but the ModelVersion expects {v1_digest}")),
        ("v4", "s3://models/missing: no manifest.json".to_owned()),
    ] {
        for component in ["retrieval", "ranking"] {
            let pod = &version_pods[&(version.to_owned(), component)];
            while !podman.logs(pod).contains(&reason) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(250));
            }
            assert!(podman.logs(pod).contains(&reason), "{}: no {reason:?} in\n{}", pod.name, podman.logs(pod));
            assert!(podman.running(pod), "{} crashed instead of waiting unready", pod.name);
            assert!(
                matches!(podman.probe(pod, reco_node::ProbeKind::Readiness), Some(Err(_))),
                "{} is ready",
                pod.name
            );
            assert!(
                matches!(podman.probe(pod, reco_node::ProbeKind::Liveness), Some(Ok(()))),
                "{} is not live",
                pod.name
            );
        }
    }
}
