//! `reco serve <service>`: one service per process, as the operator deploys
//! them. Each serves its gRPC API on `--grpc` and `/metrics`, `/healthz`,
//! `/readyz` on `--http`, and stops gracefully on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use prometheus_client::registry::Registry;
use reco_model::artifacts::load_uri_blocking;
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

/// Cancelled on SIGTERM (Kubernetes stopping the pod) or Ctrl-C.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the process");
                    let _ = ctrl_c.await;
                    trigger.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down");
        trigger.cancel();
    });
    token
}

/// Serves the admin endpoints of a non-gateway service on `addr` until `shutdown`.
async fn serve_admin(addr: SocketAddr, registry: Arc<Registry>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding --http {addr}"))?;
    let router = reco_gateway::admin_router(registry, || true);
    axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
    Ok(())
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
