//! `reco serve <service>`: one service per process, as the operator deploys
//! them. Each serves its gRPC API on `--grpc` and `/metrics`, `/healthz`,
//! `/readyz` on `--http`, and stops gracefully on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use prometheus_client::registry::Registry;
use reco_model::artifacts::load_uri_blocking;
use reco_runtime::shutdown::shutdown_on_signal;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Subcommand)]
pub enum Service {
    /// The Explore gateway: HTTP/JSON and gRPC for clients, routing by
    /// model version, shadow mirroring, signed tokens.
    Gateway(Box<reco_gateway::GatewayArgs>),
    /// Online features and event ingestion (the training log).
    Features(Box<reco_features::FeaturesArgs>),
    /// Candidate generation of one model version.
    Retrieval(Box<reco_retrieval::RetrievalArgs>),
    /// Candidate scoring of one model version.
    Ranking(Box<reco_ranking::RankingArgs>),
}

/// Serves the admin endpoints of a non-gateway service on `addr` until `shutdown`.
async fn serve_admin(addr: SocketAddr, registry: Arc<Registry>, shutdown: CancellationToken) -> anyhow::Result<()> {
    reco_runtime::admin::serve_admin(addr, registry, || true, shutdown.cancelled_owned())
        .await
        .with_context(|| format!("serving --http {addr}"))
}

pub async fn run(service: Service) -> anyhow::Result<()> {
    let shutdown = shutdown_on_signal();
    let mut registry = Registry::default();
    match service {
        Service::Gateway(args) => {
            let metrics = reco_gateway::Metrics::register(&mut registry);
            let backends = reco_gateway::remote_backends(&args)?;
            reco_gateway::serve(*args, backends, metrics, Arc::new(registry), shutdown.cancelled_owned()).await?;
        }
        Service::Features(args) => {
            let metrics = reco_features::Metrics::register(&mut registry);
            let (service, handle) = reco_features::build(&args, &metrics).await?;
            let admin = serve_admin(args.http, Arc::new(registry), shutdown.clone());
            let grpc = async {
                reco_proto::serve(reco_features::grpc_routes(service), args.grpc, shutdown.clone().cancelled_owned())
                    .await?;
                anyhow::Ok(())
            };
            let served = tokio::try_join!(admin, grpc);
            // Flush the log and snapshot even when a server failed.
            handle.shutdown().await?;
            served?;
        }
        Service::Retrieval(args) => {
            let metrics = reco_retrieval::Metrics::register(&mut registry);
            let artifacts =
                load_uri_blocking(&args.version.model_uri).await.map_err(reco_retrieval::BuildError::from)?;
            let service = reco_retrieval::build(&args, artifacts, metrics).await?;
            let admin = serve_admin(args.version.http, Arc::new(registry), shutdown.clone());
            let grpc = async {
                let addr = args.version.grpc;
                reco_proto::serve(reco_retrieval::grpc_routes(service), addr, shutdown.clone().cancelled_owned())
                    .await?;
                anyhow::Ok(())
            };
            tokio::try_join!(admin, grpc)?;
        }
        Service::Ranking(args) => {
            let metrics = reco_ranking::Metrics::register(&mut registry);
            let artifacts = load_uri_blocking(&args.version.model_uri).await?;
            let version = args.version.model_version.clone();
            let service = reco_ranking::RankingService::new(artifacts, version, &args.settings(), metrics)?;
            let admin = serve_admin(args.version.http, Arc::new(registry), shutdown.clone());
            let grpc = async {
                let addr = args.version.grpc;
                reco_proto::serve(reco_ranking::grpc_routes(service), addr, shutdown.clone().cancelled_owned()).await?;
                anyhow::Ok(())
            };
            tokio::try_join!(admin, grpc)?;
        }
    }
    Ok(())
}
