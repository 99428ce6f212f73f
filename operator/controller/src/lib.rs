//! The reco operator: reconciles RecommenderPipelines and their
//! ModelVersions into serving objects and drives each new version's rollout
//! with the pure engine of `reco-rollout`.

pub mod admin;
pub mod controller;
pub mod crds;
pub mod merge_patch;
pub mod resources;
pub mod sources;
pub mod telemetry;
