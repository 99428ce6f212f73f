//! reco-retrieval: candidate generation for one model version.
//!
//! A request's user is embedded by the two-tower user tower (batched across concurrent requests, cached by
//! user and inputs), then four sources each return their top list: two-tower ANN over the vector store,
//! item-to-item (EASE) from the user's history, popular and fresh. The lists are mixed by weight and every
//! candidate carries the evidence the ranker was trained on (see `reco-trainer`'s `dense_features`).

pub mod args;
pub mod catalog;
pub mod encoder;
pub mod metrics;
pub mod mix;
pub mod query;
pub mod serve;
pub mod service;

pub use args::{RetrievalArgs, Settings, SourceWeights, VectorStoreKind};
pub use metrics::Metrics;
pub use serve::{BuildError, build, grpc_routes, open_store};
pub use service::{RetrievalError, RetrievalService};
