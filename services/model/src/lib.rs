//! reco-model: the tch networks that the trainer fits and the serving services
//! load.
//!
//! A model is rebuilt from its serialised configuration ([`TwoTowerConfig`],
//! [`RankerConfig`]) and its safetensors weights; inputs are plain integer and
//! float batches ([`UserBatch`], [`ItemBatch`], [`RankerBatch`]) so that this
//! crate knows nothing about files, HTTP or how ids are mapped to indices.
//! Index 0 of every categorical vocabulary means "unknown or padding".
//!
//! [`features`] (the fitted feature space), [`scoring`] (ranker features and
//! the value model), [`drift`] (the reference distribution of those features)
//! and [`artifacts`] (the files of a version and their loader) are shared by `reco train` and the services, so a model serves
//! exactly as it was trained and evaluated.

pub mod artifacts;
mod config;
pub mod drift;
pub mod features;
mod inputs;
mod ranker;
pub mod scoring;
mod two_tower;

pub use config::{RankerConfig, TwoTowerConfig};
pub use inputs::{ItemBatch, RankerBatch, UserBatch, pad_bags};
pub use ranker::{Ranker, RankerOutput};
pub use two_tower::TwoTower;

/// Errors raised while building or loading a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// libtorch refused an operation (shape mismatch, missing tensor, I/O).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A batch was inconsistent (columns of different lengths).
    #[error("invalid batch: {0}")]
    Batch(String),
}
