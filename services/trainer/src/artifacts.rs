//! What a training run leaves in its output directory for the services and
//! the operator: weights (safetensors), model configs, item embeddings with
//! their ids, the feature space, data statistics, `metrics.json` and a
//! `ModelVersion` manifest.

use reco_api::{ModelVersion, ModelVersionSpec};
use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::error::{Result, TrainError};

pub use reco_model::artifacts::files;

/// `metrics.json`: test-split metrics per model under `models`.
#[derive(Debug, Clone, Serialize)]
pub struct MetricsFile {
    pub protocol: String,
    /// Test metrics; `two_tower_ranker` is the served model.
    pub models: BTreeMap<String, BTreeMap<String, f64>>,
    /// The same on the validation split (used for tuning).
    pub validation: BTreeMap<String, BTreeMap<String, f64>>,
    pub seed: u64,
}

/// The served model's offline metrics as they go into the manifest.
pub fn offline_metrics(served: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    served
        .iter()
        .filter(|(k, _)| k.contains('@') && !k.starts_with("avg_popularity"))
        .map(|(k, v)| (k.clone(), (v * 1e6).round() / 1e6))
        .collect()
}

/// The `ModelVersion` that rolls this model out once applied.
pub fn model_version(
    name: &str,
    namespace: Option<&str>,
    pipeline: &str,
    artifact_uri: &str,
    artifact_digest: &reco_artifacts::Digest,
    metrics: &BTreeMap<String, f64>,
    image: Option<&str>,
) -> Result<ModelVersion> {
    for (what, n) in [("version name", name), ("pipeline name", pipeline)] {
        if let Err(invalid) = reco_contracts::names::check_subdomain(n) {
            return Err(TrainError::Options(format!("{what} is not a valid Kubernetes name: {invalid}")));
        }
    }
    let mut version = ModelVersion::new(
        name,
        ModelVersionSpec {
            pipeline: pipeline.to_string(),
            artifact_uri: artifact_uri.to_string(),
            artifact_digest: Some(artifact_digest.to_string()),
            offline_metrics: offline_metrics(metrics),
            image: image.map(str::to_string),
        },
    );
    version.metadata.namespace = namespace.map(str::to_string);
    version.metadata.labels = Some(BTreeMap::from([
        (reco_api::PIPELINE_LABEL.to_string(), pipeline.to_string()),
        ("app.kubernetes.io/managed-by".to_string(), "reco-trainer".to_string()),
    ]));
    Ok(version)
}

pub fn write_json(dir: &Path, name: &str, value: &impl Serialize) -> Result<()> {
    let path = dir.join(name);
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| TrainError::Serialize { what: name.to_string(), message: e.to_string() })?;
    std::fs::write(&path, text + "\n").map_err(|e| TrainError::io(&path, e))
}

pub fn write_yaml(dir: &Path, name: &str, value: &impl Serialize) -> Result<()> {
    let path = dir.join(name);
    let text = serde_saphyr::to_string(value)
        .map_err(|e| TrainError::Serialize { what: name.to_string(), message: e.to_string() })?;
    std::fs::write(&path, text).map_err(|e| TrainError::io(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_has_the_crd_shape() {
        let mut m = BTreeMap::new();
        m.insert("ndcg@10".to_string(), 0.1234567891);
        m.insert("avg_popularity@10".to_string(), 300.0);
        m.insert("users".to_string(), 943.0);
        let digest = reco_artifacts::Digest::of(b"{}");
        let mv = model_version("ml-100k-s1", Some("reco"), "ml-100k", "file:///tmp/x", &digest, &m, None).unwrap();
        let yaml = serde_saphyr::to_string(&mv).unwrap();
        assert!(yaml.contains("apiVersion: reco.seed.dev/v1alpha1"), "{yaml}");
        assert!(yaml.contains("kind: ModelVersion"));
        assert!(yaml.contains("artifactUri: file:///tmp/x"));
        assert!(yaml.contains(&format!("artifactDigest: {digest}")), "{yaml}");
        assert!(yaml.contains("offlineMetrics:"));
        assert!(yaml.contains("0.123457"));
        assert!(!yaml.contains("avg_popularity") && !yaml.contains("users"));
        assert!(!yaml.contains("image"));
        assert!(!yaml.contains("status"), "a new version has no status: {yaml}");
        let parsed: ModelVersion = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(parsed.spec, mv.spec);
        assert_eq!(parsed.metadata.namespace.as_deref(), Some("reco"));
    }

    #[test]
    fn names_are_checked() {
        let (m, d) = (BTreeMap::new(), reco_artifacts::Digest::of(b""));
        assert!(model_version("ml-100k-s1.v2", None, "p", "u", &d, &m, None).is_ok());
        for bad in ["Bad Name", "ML_100k", "-a"] {
            let error = model_version(bad, None, "p", "u", &d, &m, None).unwrap_err().to_string();
            assert!(error.contains("version name is not a valid Kubernetes name"), "{error}");
        }
    }
}
