//! manifests/samples/ against the CRDs: the OpenAPI schema with unknown
//! fields rejected, then every CEL rule, as the API server checks them.

use std::collections::BTreeSet;

use reco_packaging_tests::*;
use serde_json::{Value, json};

const SAMPLES: &[&str] = &["manifests/samples/recommenderpipeline.yaml", "manifests/samples/modelversion.yaml"];

fn sample(path: &str) -> Value {
    parse_document(&read(path)).unwrap()
}

#[test]
fn samples_pass_the_crd_schemas_and_cel_rules() {
    let crds = reco_crds();
    for path in SAMPLES {
        let object = sample(path);
        let problems = validate_custom_resource(&crds, &object, None);
        assert!(problems.is_empty(), "{path}: {problems:#?}");
        // An update that changes nothing passes the transition rules too.
        let problems = validate_custom_resource(&crds, &object, Some(&object));
        assert!(problems.is_empty(), "{path} (update): {problems:#?}");
    }
    let version = sample("manifests/samples/modelversion.yaml");
    let pipeline = sample("manifests/samples/recommenderpipeline.yaml");
    assert_eq!(
        version["spec"]["pipeline"], pipeline["metadata"]["name"],
        "the sample version belongs to the sample pipeline"
    );
}

/// The validator finds what the API server would refuse, so a passing
/// sample means something.
#[test]
fn broken_samples_are_rejected_naming_the_problem() {
    let crds = reco_crds();
    let pipeline = sample("manifests/samples/recommenderpipeline.yaml");
    let version = sample("manifests/samples/modelversion.yaml");
    let edit = |base: &Value, pointer: &str, value: Value| {
        let mut edited = base.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        edited.pointer_mut(parent).unwrap().as_object_mut().unwrap().insert(key.to_owned(), value);
        edited
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        ("unknown field", edit(&pipeline, "/spec/rollout/stepz", json!([])), "stepz"),
        ("misplaced field", edit(&pipeline, "/spec/gateway/candidates", json!(10)), "candidates"),
        ("wrong type", edit(&pipeline, "/spec/gateway/deadlineMs", json!("100ms")), "/spec/gateway/deadlineMs"),
        ("out of range", edit(&pipeline, "/spec/retrieval/candidates", json!(5)), "/spec/retrieval/candidates"),
        ("unknown enum value", edit(&pipeline, "/spec/features/backend", json!("Memcached")), "/spec/features/backend"),
        (
            "decreasing canary weights",
            edit(
                &pipeline,
                "/spec/rollout/steps",
                json!([{"canary": {"weight": 50, "minImpressions": 1}}, {"canary": {"weight": 5, "minImpressions": 1}}]),
            ),
            "canary weights must be strictly increasing",
        ),
        (
            "latest image",
            edit(&pipeline, "/spec/image", json!("ghcr.io/reco-seed/reco:latest")),
            "pinned to a tag or digest",
        ),
        (
            "Kafka without brokers",
            edit(&pipeline, "/spec/events", json!({"sink": "Kafka"})),
            "kafkaBrokers and kafkaTopic are required",
        ),
        ("bad artifact URI", edit(&version, "/spec/artifactUri", json!("ftp://models/v2")), "/spec/artifactUri"),
        ("bad artifact digest", edit(&version, "/spec/artifactDigest", json!("sha256:abc")), "/spec/artifactDigest"),
        ("unknown metadata field", edit(&version, "/metadata/label", json!({})), "field .label is unknown"),
        (
            "wrong apiVersion",
            edit(&version, "/apiVersion", json!("reco.seed.dev/v1")),
            "apiVersion must be reco.seed.dev/v1alpha1",
        ),
    ];
    for (name, object, named) in cases {
        let problems = validate_custom_resource(&crds, &object, None);
        assert!(
            problems.iter().any(|p| p.contains(named)),
            "{name}: expected a problem naming {named:?}, got {problems:#?}"
        );
    }
    let changed = edit(&version, "/spec/artifactUri", json!("s3://reco-models/explore/v3"));
    let problems = validate_custom_resource(&crds, &changed, Some(&version));
    assert!(problems.iter().any(|p| p.contains("a ModelVersion is immutable")), "{problems:#?}");
}

/// Every CEL rule of both CRDs is evaluated on the samples (none is skipped
/// because the samples leave its field out): kube-cel evaluates them all.
#[test]
fn the_samples_reach_every_cel_rule() {
    let crds = reco_crds();
    for (kind, crd) in &crds {
        let schema = openapi_schema(crd);
        let all = cel_rules(schema);
        assert!(!all.is_empty(), "{kind} has CEL rules");
        let mut reached = BTreeSet::new();
        for path in SAMPLES {
            let object = sample(path);
            if object["kind"] == kind.as_str() {
                reached.extend(cel_rules_reached(schema, &object));
            }
        }
        let missed: Vec<_> = all.difference(&reached).collect();
        assert!(missed.is_empty(), "{kind}: no sample reaches these rules: {missed:#?}");
        for rule in &all {
            println!("{kind} {}: {}", rule.path, rule.rule);
        }
    }
}
