//! reco-trainer: turns interaction data into a model version.
//!
//! Data in the three-file layout ([`table`]) is validated with a full report
//! ([`validate`]), split per user in time ([`split`]), encoded with
//! train-only features ([`features`]), and used to fit the candidate sources
//! ([`sources`], [`retrieval`]) and the ranker ([`ranking`]); the two-tower
//! and the ranker stop early on validation ([`early_stopping`]). Every model is
//! evaluated on the same test users by full ranking ([`eval`], [`metrics`]),
//! and the run writes the artifacts the services load and a `ModelVersion`
//! manifest ([`artifacts`]). [`pipeline::train`] runs it all, from scratch or
//! from a served version and the events logged since it ([`incremental`]).

pub mod artifacts;
pub mod checkpoint;
pub mod early_stopping;
pub mod error;
pub mod eval;
pub mod features;
pub mod incremental;
pub mod metrics;
pub mod negatives;
pub mod pipeline;
pub mod progress;
pub mod ranking;
pub mod retrieval;
pub mod sources;
pub mod split;
pub mod table;
pub mod tune;
pub mod validate;

pub use error::TrainError;
pub use pipeline::{TrainOptions, TrainSummary, train};
pub use progress::Progress;
