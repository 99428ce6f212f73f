//! Serialisable hyper-parameters and vocabulary sizes of each network: what
//! the trainer writes next to the weights and what a service reads to rebuild
//! the same graph before loading them.

use serde::{Deserialize, Serialize};

/// Shape of a [`crate::TwoTower`]. Vocabulary sizes include index 0
/// (unknown/padding).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TwoTowerConfig {
    pub n_users: i64,
    pub n_items: i64,
    pub n_ages: i64,
    pub n_genders: i64,
    pub n_occupations: i64,
    pub n_zips: i64,
    pub n_genres: i64,
    pub n_years: i64,
    pub n_pop_buckets: i64,
    pub n_title_buckets: i64,
    pub n_dows: i64,
    pub n_hours: i64,
    /// Width of every embedding table.
    pub embed_dim: i64,
    /// Width of the hidden layer of each tower.
    pub hidden_dim: i64,
    /// Width of the L2-normalised output embedding.
    pub out_dim: i64,
    /// Softmax temperature: scores are cosine / temperature.
    pub temperature: f64,
    /// Dropout on the tower inputs during training.
    pub dropout: f64,
}

/// Shape of a [`crate::Ranker`] (DCN-v2 with parallel deep tower).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankerConfig {
    /// Width of the two-tower user and item embeddings fed in.
    pub tower_dim: i64,
    /// Number of dense features (source scores, counts).
    pub n_dense: i64,
    pub n_items: i64,
    pub n_genres: i64,
    pub n_occupations: i64,
    pub n_ages: i64,
    pub n_genders: i64,
    /// Width of the ranker's own embeddings.
    pub embed_dim: i64,
    /// Number of cross layers.
    pub cross_layers: i64,
    /// Width of the deep tower's hidden layers.
    pub hidden_dim: i64,
    pub dropout: f64,
    /// Task heads, in output order (e.g. `["interaction", "high_rating"]`).
    pub tasks: Vec<String>,
}
