//! Model artifacts wherever a `ModelVersion`'s `artifactUri` points: a
//! local directory (`file://` or a path), S3 (`s3://`), Google Cloud
//! Storage (`gs://`), Azure Blob Storage (`az://`) or plain HTTP(S), all
//! through the `object_store` crate.
//!
//! A version directory carries a manifest (`manifest.json`) with the sha256
//! and size of every file; the version's digest is the sha256 of the
//! manifest itself. The trainer writes it ([`manifest::write_manifest`]),
//! [`upload`] sends it last, and [`fetch`] downloads a version into a cache
//! only as a whole, file by file verified, so a service never loads a
//! partial, corrupted or substituted version.

pub mod manifest;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use manifest::{Digest, Manifest};
pub use store::{Fetched, StoreOptions, fetch, upload};

use std::path::PathBuf;

/// Why a version's artifacts cannot be fetched, verified or uploaded; names
/// the URI and, where one is at fault, the file.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactStoreError {
    #[error("artifactUri {uri:?}: {message}")]
    Uri { uri: String, message: String },
    #[error("{uri}: no {} (write the version with `reco train`, which writes it)", manifest::MANIFEST)]
    MissingManifest { uri: String },
    #[error("{uri}: {}: {message}", manifest::MANIFEST)]
    BadManifest { uri: String, message: String },
    #[error("{uri}: version digest is {found}, but the ModelVersion expects {expected}")]
    DigestMismatch { uri: String, expected: Digest, found: Digest },
    #[error("{uri}: {file}: missing, but listed in the manifest")]
    MissingFile { uri: String, file: String },
    #[error(
        "{uri}: {file}: {found_bytes} bytes with sha256 {found_sha256}, the manifest says {expected_bytes} bytes with sha256 {expected_sha256}"
    )]
    Corrupt {
        uri: String,
        file: String,
        expected_sha256: String,
        expected_bytes: u64,
        found_sha256: String,
        found_bytes: u64,
    },
    #[error("{uri}: {source}")]
    Store { uri: String, source: object_store::Error },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl ArtifactStoreError {
    fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ArtifactStoreError::Io { path: path.into(), source }
    }
}
