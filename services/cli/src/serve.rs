//! `reco serve <service>`: one service per process, as the operator deploys
//! them. Each serves its gRPC API on `--grpc` and `/metrics`, `/healthz`,
//! `/readyz` on `--http`, and stops gracefully on SIGTERM or Ctrl-C.
//!
//! Retrieval and ranking answer `/healthz` from the start and `/readyz` only
//! once their version is fetched, verified, loaded and served: a version that
//! cannot be fetched or fails verification keeps the pod unready, with the
//! reason logged at every retry, instead of a crash loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use clap::Subcommand;
use prometheus_client::registry::Registry;
use reco_artifacts::{Digest, StoreOptions};
use reco_model::artifacts::{VersionArtifacts, load_uri_blocking};
use reco_runtime::flags::VersionFlags;
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

/// Serves the admin endpoints of a non-gateway service on `addr` until `shutdown`, ready while `ready` holds.
async fn serve_admin(
    addr: SocketAddr,
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    reco_runtime::admin::serve_admin(addr, registry, move || ready.load(Ordering::Relaxed), shutdown.cancelled_owned())
        .await
        .with_context(|| format!("serving --http {addr}"))
}

/// The longest wait between two attempts to fetch a version.
const MAX_FETCH_BACKOFF: Duration = Duration::from_secs(60);

/// Fetches the version (object store to `--artifact-cache`, every file
/// checked against the manifest and `--artifact-digest`) and loads it,
/// retrying with backoff up to a minute apart: a bucket may become reachable
/// and a bad upload may be replaced. `None` once shutdown is asked for.
async fn fetch_version(
    flags: &VersionFlags,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Arc<VersionArtifacts>>> {
    let expected: Option<Digest> = flags
        .artifact_digest
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--artifact-digest: {e}"))?;
    let options = StoreOptions::default();
    let attempt = || async {
        let fetched =
            reco_artifacts::fetch(&flags.model_uri, &options, &flags.artifact_cache, expected.as_ref()).await?;
        tracing::info!(
            model_version = flags.model_version,
            uri = flags.model_uri,
            digest = %fetched.digest,
            downloaded_bytes = fetched.downloaded_bytes,
            "artifacts verified"
        );
        let artifacts = load_uri_blocking(&fetched.dir.display().to_string()).await?;
        anyhow::Ok(artifacts)
    };
    let retried = attempt
        .retry(ExponentialBuilder::default().with_max_delay(MAX_FETCH_BACKOFF).without_max_times())
        .notify(|error, wait| {
            tracing::error!(
                model_version = flags.model_version,
                uri = flags.model_uri,
                retry_in_s = wait.as_secs_f64(),
                "cannot serve the version, not ready: {error:#}"
            );
        });
    tokio::select! {
        loaded = retried => loaded.map(Some),
        () = shutdown.cancelled() => Ok(None),
    }
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
            let admin = serve_admin(args.http, Arc::new(registry), Arc::new(AtomicBool::new(true)), shutdown.clone());
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
            let ready = Arc::new(AtomicBool::new(false));
            let admin = serve_admin(args.version.http, Arc::new(registry), ready.clone(), shutdown.clone());
            let grpc = async {
                let Some(artifacts) = fetch_version(&args.version, &shutdown).await? else { return Ok(()) };
                let service = reco_retrieval::build(&args, artifacts, metrics).await?;
                ready.store(true, Ordering::Relaxed);
                let addr = args.version.grpc;
                reco_proto::serve(reco_retrieval::grpc_routes(service), addr, shutdown.clone().cancelled_owned())
                    .await?;
                anyhow::Ok(())
            };
            tokio::try_join!(admin, grpc)?;
        }
        Service::Ranking(args) => {
            let metrics = reco_ranking::Metrics::register(&mut registry);
            let ready = Arc::new(AtomicBool::new(false));
            let admin = serve_admin(args.version.http, Arc::new(registry), ready.clone(), shutdown.clone());
            let grpc = async {
                let Some(artifacts) = fetch_version(&args.version, &shutdown).await? else { return Ok(()) };
                let version = args.version.model_version.clone();
                let service = reco_ranking::RankingService::new(artifacts, version, &args.settings(), metrics)?;
                ready.store(true, Ordering::Relaxed);
                let addr = args.version.grpc;
                reco_proto::serve(reco_ranking::grpc_routes(service), addr, shutdown.clone().cancelled_owned()).await?;
                anyhow::Ok(())
            };
            tokio::try_join!(admin, grpc)?;
        }
    }
    Ok(())
}
