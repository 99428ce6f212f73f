//! `ModelVersion`: one trained model of one pipeline.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::status::VersionPhase;

/// One trained model (two-tower weights, ranker weights, item embeddings,
/// config) for one RecommenderPipeline. Creating it starts its rollout.
/// A version is immutable: train and create a new one instead of editing it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "reco.seed.dev",
    version = "v1alpha1",
    kind = "ModelVersion",
    plural = "modelversions",
    shortname = "mv",
    category = "reco",
    namespaced,
    status = "ModelVersionStatus",
    doc = "One trained model of a RecommenderPipeline; creating it starts its rollout.",
    printcolumn(name = "Pipeline", type_ = "string", json_path = ".spec.pipeline"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Weight", type_ = "integer", json_path = ".status.weight"),
    printcolumn(name = "CTR", type_ = "number", json_path = ".status.ctr"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.reason", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    selectable = ".spec.pipeline"
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("a ModelVersion is immutable: create a new one"))]
pub struct ModelVersionSpec {
    /// Name of the RecommenderPipeline (same namespace) this model belongs to.
    #[schemars(length(min = 1, max = 253))]
    pub pipeline: String,
    /// Where the artifacts are: a directory written by `reco train`, as
    /// `s3://bucket/prefix`, `gs://...`, `az://...`, `https://...` or
    /// `file:///models/v2` (a path inside the pods). Pods download it before
    /// they report ready and check every file against its `manifest.json`.
    #[schemars(regex(pattern = r"^(file|s3|gs|az|http|https)://.+"))]
    pub artifact_uri: String,
    /// The version's digest (`sha256:` and 64 hex digits, the sha256 of its
    /// `manifest.json`), as `reco train` writes it. Pods refuse artifacts
    /// with another digest, so what is served is what was evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^sha256:[0-9a-f]{64}$"))]
    pub artifact_digest: Option<String>,
    /// Offline evaluation written by the trainer, e.g. `ndcg@10: 0.13`. The
    /// pipeline's offline gate compares these with stable's.
    #[serde(default)]
    pub offline_metrics: BTreeMap<String, f64>,
    /// Image of the retrieval and ranking pods of this version, when it
    /// needs code other than the pipeline's image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// Observed state of a ModelVersion, written by the operator only.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelVersionStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Pending`, `Shadow`, `Canary`, `Stable`, `RolledBack`, `Failed` or `Retired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<VersionPhase>,
    /// Percentage of the pipeline's users this version serves.
    #[serde(default)]
    pub weight: u8,
    /// Live click-through rate seen in the last analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctr: Option<f64>,
    /// Why the version is in its phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The artifact digest the version's ready pods serve (they refuse any
    /// other than `spec.artifactDigest`); unset while no pod is ready or
    /// when the spec names no digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
