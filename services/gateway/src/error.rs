//! Startup and configuration errors (request errors are in [`crate::api`]).

use std::path::PathBuf;

/// Why the gateway cannot start or a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid flag: {0}")]
    Flag(String),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind { what: &'static str, addr: std::net::SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("invalid endpoint: {0}")]
    Remote(#[from] crate::remote::RemoteError),
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
}
