//! The reco operator: reconciles RecommenderPipelines and their
//! ModelVersions into serving objects and drives each new version's rollout
//! with the pure engine of `reco-rollout`.

pub mod controller;
pub mod crds;
pub mod observed;
pub mod policy;
pub mod resources;
pub mod sources;
pub mod status;
pub mod telemetry;
pub mod validation;
