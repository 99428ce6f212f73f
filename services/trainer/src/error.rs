//! The trainer's error type.

use std::path::PathBuf;

use crate::validate::ValidationReport;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A data file is not a readable delimited table.
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    /// The data directory does not hold the expected layout.
    #[error("{0}")]
    Layout(String),
    /// The data failed validation; the report lists every problem.
    #[error("{0}")]
    Invalid(Box<ValidationReport>),
    /// Options that cannot work together.
    #[error("invalid option: {0}")]
    Options(String),
    #[error(transparent)]
    Model(#[from] reco_model::ModelError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("artifacts: {0}")]
    Artifacts(#[from] reco_artifacts::ArtifactStoreError),
    #[error("serialising {what}: {message}")]
    Serialize { what: String, message: String },
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io { path: path.into(), source }
    }
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;
