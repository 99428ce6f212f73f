//! The reco custom resources, group `reco.seed.dev`, version `v1alpha1`.
//!
//! - [`RecommenderPipeline`] (`rp`): the services of one recommender and the
//!   policy that rolls new model versions out.
//! - [`ModelVersion`] (`mv`): one trained model of one pipeline.
//!
//! The doc comments on spec fields become the schema descriptions that
//! `kubectl explain` prints, so they are written for users. The status types
//! ([`status`]) are a documented shape of their own, not the rollout engine's
//! state: this crate knows nothing of the engine.

// kube's `printcolumn(name = .., type_ = ..)` repeats `type_` once per column,
// which clippy mistakes for a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

mod conditions;
mod model_version;
mod pipeline;
pub mod status;

pub use conditions::{ConditionType, set_condition};
pub use model_version::{ModelVersion, ModelVersionSpec, ModelVersionStatus};
pub use pipeline::*;
pub use status::{CtrEstimate, PipelinePhase, RecommenderPipelineStatus, SideEstimate, VersionPhase};

/// API group of the reco resources.
pub const GROUP: &str = "reco.seed.dev";
/// Field manager the operator uses for server-side apply.
pub const FIELD_MANAGER: &str = "reco-operator";
/// Annotation on a ModelVersion that promotes it now, skipping the remaining steps.
pub const PROMOTE_ANNOTATION: &str = "reco.seed.dev/promote";
/// Annotation on a ModelVersion that aborts its rollout now.
pub const ABORT_ANNOTATION: &str = "reco.seed.dev/abort";
/// Label on every object the operator creates: the pipeline it belongs to.
pub const PIPELINE_LABEL: &str = "reco.seed.dev/pipeline";
/// Label on per-version objects: the model version they serve.
pub const VERSION_LABEL: &str = "reco.seed.dev/model-version";
