//! `reco demo`: the whole product on one machine.
//!
//! - [`runner`]: the local runner, the operator's rollout engine
//!   (`reco-rollout`) driven from a state file instead of a pipeline status,
//!   writing the `routing.yaml` that `reco standalone` hot-reloads.
//! - [`replay`] and [`sim`]: live traffic replayed from ml-100k's held-out
//!   future through the gateway's real HTTP API.
//! - [`policy`]: the demo's rollout policy, validated like the operator's.
//! - [`cluster`]: the same scenario through the operator on a cluster
//!   (`reco demo --cluster`).

pub mod chart;
pub mod cluster;
pub mod models;
pub mod policy;
pub mod replay;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod sim;
pub mod stack;
