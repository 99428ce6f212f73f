//! Checks of a pipeline and its versions before anything is written: the
//! names its objects are made of (which no CRD schema can check, since they
//! join several names) and the spec rules of the schema that the pods depend
//! on, which a spec may lack (an older CRD). Each error names its field.

use kube::ResourceExt;
use reco_api::{FeatureBackend, RecommenderPipeline};
use reco_contracts::names::{NameError, check_label, check_service_name, check_subdomain};

use crate::policy::InvalidSpec;
use crate::resources::{
    Component, features_service_name, features_statefulset_name, gateway_service_name, routing_configmap_name,
    token_secret_name, version_object_name,
};

fn invalid(field: &str, message: impl Into<String>) -> InvalidSpec {
    InvalidSpec { field: field.to_owned(), message: message.into() }
}

/// The first problem of `p` that would make an object it renders invalid.
pub fn check_pipeline(p: &RecommenderPipeline) -> Result<(), InvalidSpec> {
    let name = p.name_any();
    // The name starts every Service name and is a label value.
    check_service_name(&name).map_err(|e| invalid("metadata.name", name_problem(e)))?;
    let mut objects = vec![
        gateway_service_name(p),
        features_service_name(&name),
        features_statefulset_name(&name),
        routing_configmap_name(&name),
    ];
    if p.spec.gateway.token_key_secret.is_none() {
        objects.push(token_secret_name(p));
    }
    for object in objects {
        check_service_name(&object).map_err(|e| invalid("metadata.name", format!("object name {e}")))?;
    }
    if let Some(secret) = &p.spec.gateway.token_key_secret {
        check_subdomain(secret).map_err(|e| invalid("spec.gateway.tokenKeySecret", e.to_string()))?;
    }
    if let Some(image) = &p.spec.image
        && (image.is_empty() || image.ends_with(":latest"))
    {
        return Err(invalid("spec.image", format!("{image:?} must be pinned to a tag or digest other than latest")));
    }
    let features = &p.spec.features;
    if features.backend == FeatureBackend::Embedded && features.component.replicas.is_some_and(|r| r > 1) {
        return Err(invalid(
            "spec.features.replicas",
            "must be at most 1 with the Embedded backend, which keeps each user's features in one pod; use backend Redis to scale out",
        ));
    }
    if !is_quantity(&features.storage.size) {
        return Err(invalid(
            "spec.features.storage.size",
            format!("{:?} is not a quantity like 10Gi or 500Mi", features.storage.size),
        ));
    }
    if let Some(class) = &features.storage.storage_class_name {
        check_subdomain(class).map_err(|e| invalid("spec.features.storage.storageClassName", e.to_string()))?;
    }
    Ok(())
}

/// Why a ModelVersion's name cannot name its objects, if it cannot: it is a
/// label value and part of its Services' names. Names cannot be changed, so
/// the message says to create the version again.
pub fn version_name_problem(pipeline: &str, version: &str) -> Option<String> {
    let problem = check_label(version).err().map(name_problem).or_else(|| {
        [Component::Retrieval, Component::Ranking]
            .into_iter()
            .find_map(|c| check_service_name(&version_object_name(pipeline, c, version)).err())
            .map(|e| format!("object name {e}"))
    })?;
    Some(format!("metadata.name: {problem}; create the version again under a valid name"))
}

/// A name rule's error, with what the rule is for.
fn name_problem(error: NameError) -> String {
    format!("{error} (it names Services and is a label value: at most 63 lower-case letters, digits and '-')")
}

/// A Kubernetes quantity as the CRD's pattern allows: a decimal and an optional suffix.
fn is_quantity(value: &str) -> bool {
    const SUFFIXES: [&str; 12] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E"];
    let number = SUFFIXES.iter().find_map(|s| value.strip_suffix(s)).unwrap_or(value);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(whole) && digits(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reco_api::RecommenderPipelineSpec;

    fn pipeline(name: &str, spec: serde_json::Value) -> RecommenderPipeline {
        let spec: RecommenderPipelineSpec = serde_json::from_value(spec).unwrap();
        RecommenderPipeline::new(name, spec)
    }

    #[test]
    fn pipeline_names_must_make_service_names_and_label_values() {
        assert_eq!(check_pipeline(&pipeline("explore", serde_json::json!({}))), Ok(()));
        assert_eq!(check_pipeline(&pipeline(&"a".repeat(63), serde_json::json!({}))), Ok(()), "cut and hashed");
        // Valid object names (DNS subdomains) that are not valid Service names or label values.
        for bad in ["ex.plore", &"a".repeat(64), "2024-home"] {
            let error = check_pipeline(&pipeline(bad, serde_json::json!({}))).unwrap_err();
            assert_eq!(error.field, "metadata.name", "{bad}");
            assert!(error.message.contains(bad), "{error}");
        }
    }

    #[test]
    fn version_names_must_make_service_names_and_label_values() {
        assert_eq!(version_name_problem("explore", "v2"), None);
        assert_eq!(version_name_problem("explore", "2024-06-01"), None, "the pipeline name comes first");
        assert_eq!(version_name_problem("explore", &"v".repeat(63)), None, "object names are cut and hashed");
        for bad in ["v2.1", &"v".repeat(70), "V2", "v2-"] {
            let problem = version_name_problem("explore", bad).unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(problem.starts_with("metadata.name: "), "{problem}");
            assert!(problem.contains("create the version again"), "{problem}");
        }
    }

    #[test]
    fn spec_rules_the_pods_depend_on_are_rechecked() {
        let cases = [
            (serde_json::json!({"image": ""}), "spec.image"),
            (serde_json::json!({"image": "ghcr.io/reco-seed/reco:latest"}), "spec.image"),
            (serde_json::json!({"features": {"replicas": 2}}), "spec.features.replicas"),
            (serde_json::json!({"features": {"storage": {"size": "lots"}}}), "spec.features.storage.size"),
            (
                serde_json::json!({"features": {"storage": {"storageClassName": "Fast_SSD"}}}),
                "spec.features.storage.storageClassName",
            ),
            (serde_json::json!({"gateway": {"tokenKeySecret": "my_secret"}}), "spec.gateway.tokenKeySecret"),
        ];
        for (spec, field) in cases {
            assert_eq!(check_pipeline(&pipeline("explore", spec.clone())).unwrap_err().field, field, "{spec}");
        }
        let redis = serde_json::json!({"features": {"replicas": 3, "backend": "Redis", "redisUrl": "redis://r:6379"}});
        assert_eq!(check_pipeline(&pipeline("explore", redis)), Ok(()));
        for good in ["10Gi", "500Mi", "1.5Ti", "1000000", "2G"] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in ["", "Gi", "10 Gi", "1.Gi", "-1Gi", "10gb"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}
