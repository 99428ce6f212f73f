//! One error type for both backends; every variant names the collection so a log line alone says where it failed.

/// What went wrong, and in which collection.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid collection name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("collection {collection}: invalid spec: {reason}")]
    InvalidSpec { collection: String, reason: String },
    #[error("collection {collection} does not exist")]
    MissingCollection { collection: String },
    #[error("collection {collection} already exists with {found}, requested {requested}")]
    SpecMismatch { collection: String, found: String, requested: String },
    #[error("collection {collection}: {what} has dimension {got}, expected {expected}")]
    DimensionMismatch { collection: String, what: String, expected: usize, got: usize },
    #[error("collection {collection}: {what} is empty")]
    EmptyVector { collection: String, what: String },
    #[error("collection {collection}: {what} has a non-finite value ({value}) at index {index}")]
    NonFinite { collection: String, what: String, index: usize, value: f32 },
    #[error("collection {collection}: k = {k} is out of range 1..={max}")]
    InvalidK { collection: String, k: usize, max: usize },
    #[error("collection {collection}: {what} has {got} entries, at most {max} allowed")]
    TooMany { collection: String, what: &'static str, got: usize, max: usize },
    #[error("collection {collection}: point {id}: {reason}")]
    InvalidPayload { collection: String, id: u64, reason: String },
    #[error("collection {collection}: embedded engine: {message}")]
    Engine { collection: String, message: String },
    #[error("collection {collection}: qdrant server: {source}")]
    Server {
        collection: String,
        #[source]
        source: Box<qdrant_client::QdrantError>,
    },
    #[error("collection {collection}: qdrant server answered unexpectedly: {message}")]
    ServerResponse { collection: String, message: String },
    #[error("collection {collection}: {context}: {source}")]
    Io {
        collection: String,
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// Result with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
