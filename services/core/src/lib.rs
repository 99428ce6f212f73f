//! Shared core of the serving services (gateway, retrieval, ranking, features, events).
//!
//! Only pure, dependency-light building blocks live here so that every service can use them
//! without pulling in a runtime:
//! - [`rerank`]: the final reranking step (dedup, freshness, MMR diversity, per-category cap).
//! - [`token`]: signed recommendation tokens that let click attribution work without server state.

pub mod rerank;
pub mod token;
