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

/// The flags that name the served model version and its addresses, shared by `reco serve retrieval` and
/// `reco serve ranking` (the operator's `version_deployment` passes them to both).
#[derive(clap::Args, Clone, Debug)]
pub struct VersionFlags {
    /// The RecommenderPipeline this version belongs to.
    #[arg(long)]
    pub pipeline: String,
    /// The ModelVersion served (echoed in every response).
    #[arg(long)]
    pub model_version: String,
    /// The version's artifact directory written by `reco train`: `file:///abs/path` or a path.
    #[arg(long)]
    pub model_uri: String,
    /// Address of the HTTP server (/metrics, /healthz, /readyz).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub http: SocketAddr,
    /// Address of the gRPC server (the service's API).
    #[arg(long, default_value = "0.0.0.0:50051")]
    pub grpc: SocketAddr,
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
    fn event_names_round_trip() {
        for t in [EventType::Click, EventType::Like, EventType::Save, EventType::Hide, EventType::Dwell] {
            assert_eq!(EventType::from_name(t.name().unwrap()), Some(t));
        }
        assert_eq!(EventType::from_name("purchase"), None);
        assert_eq!(EventType::Unspecified.name(), None);
    }

    #[test]
    fn version_flags_need_the_version_and_default_the_addresses() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            version: VersionFlags,
        }
        let cli = Cli::try_parse_from(["r", "--pipeline=p", "--model-version=v1", "--model-uri=file:///m/v1"]).unwrap();
        let v = cli.version;
        assert_eq!((v.pipeline.as_str(), v.model_version.as_str(), v.model_uri.as_str()), ("p", "v1", "file:///m/v1"));
        assert_eq!((v.http.to_string(), v.grpc.to_string()), ("0.0.0.0:8080".into(), "0.0.0.0:50051".into()));
        assert!(Cli::try_parse_from(["r", "--pipeline=p", "--model-version=v1"]).is_err());
    }
}
