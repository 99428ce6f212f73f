//! reco-proto: the gRPC contracts of the reco services (`reco.v1`).
//!
//! Every service implements the generated server trait (`retrieval_server::Retrieval`,
//! `ranking_server::Ranking`, ...). The gateway holds them as trait objects, so
//! `reco standalone` calls the implementations in-process and `reco serve` reaches
//! them over gRPC through the generated clients, with the same messages.

#![allow(clippy::doc_markdown, clippy::large_enum_variant)]

pub mod v1 {
    tonic::include_proto!("reco.v1");
}

pub use v1::*;

use std::future::Future;
use std::net::SocketAddr;

use xxhash_rust::xxh3::Xxh3;

/// Longest id on the wire (user, item, request, model version, pipeline), in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// Every value of `Candidate.source` and `RecommendedItem.source`: the retrieval sources, and
/// `content` for items added after training, found through their content embedding. Metrics
/// label by these names only, so a misbehaving backend cannot grow their cardinality.
pub const CANDIDATE_SOURCES: [&str; 5] = ["two_tower", "item_to_item", "popular", "fresh", "content"];

/// Why an id breaks the rule every service checks it against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("{0} bytes, more than the limit of {MAX_ID_BYTES}")]
    TooLong(usize),
    #[error("contains control characters")]
    ControlCharacters,
}

/// The one rule for ids, applied by the gateway and by every service it
/// calls: a request the gateway accepts is never refused downstream (which
/// would be charged to a model version as its error).
pub fn check_id(value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty);
    }
    if value.len() > MAX_ID_BYTES {
        return Err(IdError::TooLong(value.len()));
    }
    if value.chars().any(char::is_control) {
        return Err(IdError::ControlCharacters);
    }
    Ok(())
}

/// One event's identity: a 128-bit hash of request id, item id and type, the facts a served
/// page's token vouches for. The gateway deduplicates on it and the events service applies a
/// retry of it once; a chance collision, which would drop one event, is about 2^-128 per pair.
pub fn event_key(request_id: &str, item_id: &str, event_type: EventType) -> u128 {
    let mut hasher = Xxh3::new();
    // Length-prefixed: ("ab", "c") and ("a", "bc") are different events.
    hasher.update(&(request_id.len() as u64).to_be_bytes());
    hasher.update(request_id.as_bytes());
    hasher.update(&(item_id.len() as u64).to_be_bytes());
    hasher.update(item_id.as_bytes());
    hasher.update(&i32::from(event_type).to_be_bytes());
    hasher.digest128()
}

/// Why a gRPC server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves `routes` on `addr` until `shutdown` resolves (in-flight calls finish).
pub async fn serve(
    routes: tonic::service::Routes,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })?;
    serve_on(routes, listener, shutdown).await
}

/// Like [`serve`] on a bound listener (tests bind `127.0.0.1:0`).
pub async fn serve_on(
    routes: tonic::service::Routes,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), shutdown)
        .await?;
    Ok(())
}

impl EventType {
    /// The JSON / counter name of an event type (`"click"`, ...); `None` for unspecified.
    pub fn name(self) -> Option<&'static str> {
        match self {
            EventType::Unspecified => None,
            EventType::Click => Some("click"),
            EventType::Like => Some("like"),
            EventType::Save => Some("save"),
            EventType::Hide => Some("hide"),
            EventType::Dwell => Some("dwell"),
        }
    }

    /// Parses the JSON name of an event type.
    pub fn from_name(name: &str) -> Option<Self> {
        [EventType::Click, EventType::Like, EventType::Save, EventType::Hide, EventType::Dwell]
            .into_iter()
            .find(|t| t.name() == Some(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_requests_items_and_types() {
        let key = event_key("r1", "i1", EventType::Click);
        assert_eq!(key, event_key("r1", "i1", EventType::Click));
        for other in [
            event_key("r2", "i1", EventType::Click),
            event_key("r1", "i2", EventType::Click),
            event_key("r1", "i1", EventType::Like),
            event_key("r1i", "1", EventType::Click),
        ] {
            assert_ne!(key, other);
        }
    }

    #[test]
    fn ids_follow_one_rule() {
        assert_eq!(check_id("u-42"), Ok(()));
        assert_eq!(check_id("é"), Ok(()));
        assert_eq!(check_id(""), Err(IdError::Empty));
        assert_eq!(check_id(&"x".repeat(MAX_ID_BYTES)), Ok(()));
        assert_eq!(check_id(&"x".repeat(MAX_ID_BYTES + 1)), Err(IdError::TooLong(257)));
        for hostile in ["a\u{7}b", "a\nb", "\u{0}", "a\u{9f}"] {
            assert_eq!(check_id(hostile), Err(IdError::ControlCharacters), "{hostile:?}");
        }
        assert_eq!(IdError::TooLong(300).to_string(), "300 bytes, more than the limit of 256");
    }

    #[test]
    fn event_names_round_trip() {
        for t in [EventType::Click, EventType::Like, EventType::Save, EventType::Hide, EventType::Dwell] {
            assert_eq!(EventType::from_name(t.name().unwrap()), Some(t));
        }
        assert_eq!(EventType::from_name("purchase"), None);
        assert_eq!(EventType::Unspecified.name(), None);
    }
}
