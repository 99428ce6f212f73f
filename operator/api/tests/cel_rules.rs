//! The CRDs' CEL rules (`x-kubernetes-validations`), evaluated client-side
//! with kube-cel as an API server would: defaults applied first, then every
//! rule. Each case is a spec a user could write.

use kube::CustomResourceExt;
use kube::core::cel::Validator;
use reco_api::{ModelVersion, RecommenderPipeline};
use serde_json::{Value, json};

fn schema_of(
    crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    serde_json::to_value(crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap()).unwrap()
}

fn pipeline(spec: Value) -> Value {
    json!({"apiVersion": "reco.seed.dev/v1alpha1", "kind": "RecommenderPipeline",
           "metadata": {"name": "explore", "namespace": "reco"}, "spec": spec})
}

/// The messages of the rules that fail, or an empty list.
fn failures(schema: &Value, object: &Value, old: Option<&Value>) -> Vec<String> {
    match Validator::new().validate(schema, object, old) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.as_slice().iter().map(|e| e.message.clone()).collect(),
    }
}

#[test]
fn pipeline_rules_accept_good_specs_and_name_bad_ones() {
    let schema = schema_of(RecommenderPipeline::crd());
    let canary = |w: u32| json!({"canary": {"weight": w, "minImpressions": 1000}});
    let cases: Vec<(&str, Value, Option<&str>)> = vec![
        ("empty spec takes the defaults", json!({}), None),
        (
            "shadow then increasing canaries",
            json!({"rollout": {"steps": [{"shadow": {"duration": "5m"}}, canary(5), canary(20), canary(100)]}}),
            None,
        ),
        (
            "decreasing canary weights",
            json!({"rollout": {"steps": [canary(20), canary(10)]}}),
            Some("canary weights must be strictly increasing"),
        ),
        (
            "repeated canary weight",
            json!({"rollout": {"steps": [canary(20), {"shadow": {"duration": "1m"}}, canary(20)]}}),
            Some("canary weights must be strictly increasing"),
        ),
        (
            "step with both kinds",
            json!({"rollout": {"steps": [{"shadow": {"duration": "1m"}, "canary": {"weight": 5, "minImpressions": 1}}]}}),
            Some("a step is exactly one of shadow or canary"),
        ),
        (
            "step with neither kind",
            json!({"rollout": {"steps": [{}]}}),
            Some("a step is exactly one of shadow or canary"),
        ),
        (
            "zero minimum impressions",
            json!({"rollout": {"steps": [{"canary": {"weight": 5, "minImpressions": 0}}]}}),
            Some("minImpressions must be above zero"),
        ),
        (
            "margin of 1",
            json!({"rollout": {"analysis": {"ctrMargin": 1.0}}}),
            Some("ctrMargin must be strictly between 0 and 1"),
        ),
        (
            "margin of 0",
            json!({"rollout": {"analysis": {"ctrMargin": 0.0}}}),
            Some("ctrMargin must be strictly between 0 and 1"),
        ),
        (
            "confidence of 1",
            json!({"rollout": {"analysis": {"confidence": 1.0}}}),
            Some("confidence must be strictly between 0 and 1"),
        ),
        (
            "prometheus without url",
            json!({"rollout": {"analysis": {"source": "Prometheus"}}}),
            Some("prometheusUrl is required when source is Prometheus"),
        ),
        (
            "prometheus with url",
            json!({"rollout": {"analysis": {"source": "Prometheus", "prometheusUrl": "http://prometheus:9090"}}}),
            None,
        ),
        (
            "redis without url",
            json!({"features": {"backend": "Redis"}}),
            Some("redisUrl is required when backend is Redis"),
        ),
        (
            "qdrant without url",
            json!({"retrieval": {"vectorStore": "Qdrant"}}),
            Some("qdrantUrl is required when vectorStore is Qdrant"),
        ),
        (
            "kafka without brokers",
            json!({"events": {"sink": "Kafka"}}),
            Some("kafkaBrokers and kafkaTopic are required when sink is Kafka"),
        ),
        (
            "latest image",
            json!({"image": "ghcr.io/reco-seed/reco:latest"}),
            Some("image must be set and pinned to a tag or digest other than latest"),
        ),
        (
            "empty image",
            json!({"image": ""}),
            Some("image must be set and pinned to a tag or digest other than latest"),
        ),
        ("pinned image", json!({"image": "ghcr.io/reco-seed/reco:0.2.0"}), None),
        (
            "two embedded feature stores",
            json!({"features": {"replicas": 2}}),
            Some(
                "replicas must be at most 1 with the Embedded backend, which keeps each user's features in one pod; use backend Redis to scale out",
            ),
        ),
        (
            "two features pods on Redis",
            json!({"features": {"replicas": 2, "backend": "Redis", "redisUrl": "redis://redis:6379"}}),
            None,
        ),
        (
            "gate regression of 1",
            json!({"rollout": {"offlineGate": {"metric": "ndcg@10", "maxRegression": 1.0}}}),
            Some("maxRegression must be in [0, 1)"),
        ),
    ];
    for (name, spec, expected) in cases {
        let found = failures(&schema, &pipeline(spec), None);
        match expected {
            None => assert!(found.is_empty(), "{name}: unexpected failures {found:?}"),
            Some(message) => assert!(found.iter().any(|m| m == message), "{name}: expected {message:?}, got {found:?}"),
        }
    }
}

#[test]
fn model_version_spec_is_immutable() {
    let schema = schema_of(ModelVersion::crd());
    let version = |uri: &str| {
        json!({"apiVersion": "reco.seed.dev/v1alpha1", "kind": "ModelVersion",
               "metadata": {"name": "v2", "namespace": "reco"},
               "spec": {"pipeline": "explore", "artifactUri": uri, "offlineMetrics": {"ndcg@10": 0.13}}})
    };
    let old = version("s3://models/v2");
    assert!(failures(&schema, &old, None).is_empty());
    assert!(failures(&schema, &old, Some(&old)).is_empty());
    let changed = failures(&schema, &version("s3://models/v3"), Some(&old));
    assert_eq!(changed, ["a ModelVersion is immutable: create a new one"]);
}

#[test]
fn features_storage_is_fixed_at_creation() {
    let schema = schema_of(RecommenderPipeline::crd());
    let sized = |size: &str| pipeline(json!({"features": {"storage": {"size": size}}}));
    let old = sized("10Gi");
    assert!(failures(&schema, &old, Some(&old)).is_empty());
    assert!(failures(&schema, &sized("20Gi"), None).is_empty(), "any size at creation");
    let changed = failures(&schema, &sized("20Gi"), Some(&old));
    assert_eq!(changed, ["storage cannot change once created: a StatefulSet's volume claims are fixed"]);
    // Unset storage is the default, unchanged by an unrelated edit.
    let unset = pipeline(json!({}));
    assert!(failures(&schema, &pipeline(json!({"paused": true})), Some(&unset)).is_empty());
    assert!(!failures(&schema, &sized("50Gi"), Some(&unset)).is_empty(), "setting it later changes it too");
}
