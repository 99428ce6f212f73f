//! What the shipped manifests assume of this operator, checked on the files
//! themselves: the packaging tests compare the chart with the kustomize
//! manifests, and these compare the kustomize manifests with what the
//! operator renders.

use std::collections::BTreeMap;

use reco_api::{ModelVersion, RecommenderPipeline, RecommenderPipelineSpec};
use reco_operator::resources::{self, Component, DEFAULT_SERVICES_IMAGE, Defaults};
use serde_json::{Value, json};

fn manifest(path: &str) -> Value {
    let path = format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn pipeline(name: &str) -> RecommenderPipeline {
    let spec: RecommenderPipelineSpec = serde_json::from_value(json!({})).unwrap();
    let mut p = RecommenderPipeline::new(name, spec);
    p.metadata.namespace = Some("recs-prod".into());
    p
}

/// The PodMonitor selects every pod the operator renders (gateway, features, retrieval,
/// ranking) on its HTTP port, and its relabeling makes `job` the gateway Service's name for
/// gateways (what the Prometheus metric source queries), for names the operator cuts and
/// hashes too, and the controller's name for the others.
#[test]
fn the_pod_monitor_scrapes_every_component_and_gateways_under_their_service_name() {
    let monitor = manifest("manifests/components/podmonitor/podmonitor.yaml");
    let selects = |labels: &BTreeMap<String, String>| {
        let wanted = monitor["spec"]["selector"]["matchLabels"].as_object().unwrap();
        wanted.iter().all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str())
    };
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    // Prometheus' relabeling: the source labels joined by `;`, the regex anchored, rules in order.
    let job = |kind: &str, controller: &str| {
        let mut job = None;
        for rule in endpoint["relabelings"].as_array().unwrap() {
            let source: Vec<&str> = rule["sourceLabels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| match l.as_str().unwrap() {
                    "__meta_kubernetes_pod_controller_kind" => kind,
                    "__meta_kubernetes_pod_controller_name" => controller,
                    other => panic!("unexpected source label {other}"),
                })
                .collect();
            let regex = regex::Regex::new(&format!("^(?:{})$", rule["regex"].as_str().unwrap_or("(.*)"))).unwrap();
            let value = source.join(";");
            if regex.is_match(&value) {
                assert_eq!(rule["targetLabel"], "job");
                job = Some(regex.replace(&value, rule["replacement"].as_str().unwrap_or("$1")).into_owned());
            }
        }
        job.expect("a job")
    };
    let http_port = |template: &k8s_openapi::api::core::v1::PodTemplateSpec| {
        let port = &template.spec.as_ref().unwrap().containers[0].ports.as_ref().unwrap()[0];
        assert_eq!(port.name.as_deref(), endpoint["port"].as_str());
    };

    for name in ["explore", &"a".repeat(60)] {
        let p = pipeline(name);
        let gateway = resources::gateway_deployment(&p, &Defaults::default());
        let template = &gateway.spec.as_ref().unwrap().template;
        assert!(selects(template.metadata.as_ref().unwrap().labels.as_ref().unwrap()), "{name}: gateways selected");
        http_port(template);
        // A Deployment's pod's controller is its ReplicaSet, `<deployment>-<pod-template-hash>`.
        let replica_set = format!("{}-7d9f8c6b5", gateway.metadata.name.as_deref().unwrap());
        assert_eq!(job("ReplicaSet", &replica_set), resources::gateway_service_name(&p), "{name}");

        let version = ModelVersion::new(
            "v1",
            serde_json::from_value(json!({"pipeline": name, "artifactUri": "file:///m"})).unwrap(),
        );
        for component in [Component::Retrieval, Component::Ranking] {
            let d = resources::version_deployment(&p, &version, component, &Defaults::default());
            let deployment = d.metadata.name.clone().unwrap();
            let template = d.spec.unwrap().template;
            assert!(selects(template.metadata.as_ref().unwrap().labels.as_ref().unwrap()), "{name}: {component:?}");
            http_port(&template);
            assert_eq!(job("ReplicaSet", &format!("{deployment}-5f6d7c8b9")), deployment, "{name}: {component:?}");
        }
        let features = resources::features_statefulset(&p, &Defaults::default());
        let statefulset = features.metadata.name.clone().unwrap();
        let template = features.spec.unwrap().template;
        assert!(selects(template.metadata.as_ref().unwrap().labels.as_ref().unwrap()), "{name}: features selected");
        http_port(&template);
        assert_eq!(job("StatefulSet", &statefulset), statefulset, "{name}: a StatefulSet's name has no hash to cut");
    }
}

/// The manifests run the operator with the services image it defaults to:
/// the release matching its own version.
#[test]
fn the_manifests_pass_the_services_image_of_this_release() {
    let deployment = manifest("manifests/base/deployment.yaml");
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
    let image = env.iter().find(|e| e["name"] == "RECO_SERVICES_IMAGE").expect("RECO_SERVICES_IMAGE");
    assert_eq!(image["value"], DEFAULT_SERVICES_IMAGE);
}
