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
    Features(Box<FeaturesServeArgs>),
    /// Candidate generation of one model version.
    Retrieval(Box<reco_retrieval::RetrievalArgs>),
    /// Candidate scoring of one model version.
    Ranking(Box<reco_ranking::RankingArgs>),
}

/// `reco serve features`: the service's flags and the history an empty store starts from.
#[derive(Debug, clap::Args)]
pub struct FeaturesServeArgs {
    #[command(flatten)]
    pub features: reco_features::FeaturesArgs,

    /// Load this data set's users and interactions into the store when it
    /// holds no user yet: a directory, or an object-store prefix (s3://,
    /// gs://, az://, http(s)://) holding a data set in the trainer's input
    /// format with its manifest.json. The pod is ready once it is loaded.
    #[arg(long)]
    pub seed_from: Option<String>,

    /// Leave out this fraction of each user's latest interactions (0 to 0.5).
    #[arg(long, default_value_t = 0.0, requires = "seed_from")]
    pub seed_holdout: f64,
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

/// Retries `attempt` with backoff up to a minute apart, logging each failure
/// with `what` (the pod stays unready meanwhile); `None` once shutdown is asked for.
async fn retry_until_done<T, F, Fut>(what: &str, attempt: F, shutdown: &CancellationToken) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let retried = attempt
        .retry(ExponentialBuilder::default().with_max_delay(MAX_FETCH_BACKOFF).without_max_times())
        .notify(|error, wait| {
            tracing::error!(retry_in_s = wait.as_secs_f64(), "{what}, not ready: {error:#}");
        });
    tokio::select! {
        done = retried => done.ok(),
        () = shutdown.cancelled() => None,
    }
}

/// Seeds the store from `--seed-from` unless it holds users already, and restricts ingestion to
/// the data set's items.
async fn seed_features(
    args: &FeaturesServeArgs,
    service: &reco_features::FeatureService,
    shutdown: &CancellationToken,
) -> Option<()> {
    let Some(uri) = &args.seed_from else { return Some(()) };
    let cache = args.features.data_dir.join(&args.features.pipeline).join("seed");
    let attempt = || async {
        let fetched = reco_artifacts::fetch(uri, &StoreOptions::default(), &cache, None).await?;
        let (dir, holdout) = (fetched.dir.clone(), args.seed_holdout);
        let seed = tokio::task::spawn_blocking(move || {
            crate::seed::seed_material(&dir, crate::seed::Holdout::Fraction(holdout))
        })
        .await??;
        let outcome = service.seed(&seed.users, &seed.interactions).await?;
        tracing::info!(
            uri, digest = %fetched.digest, ?outcome, users = seed.users.len(),
            interactions = seed.interactions.len(), items = seed.items.len(), "feature store seeding"
        );
        // The data set's catalog: events naming other items are refused from now on.
        service.set_catalog(seed.items);
        anyhow::Ok(())
    };
    retry_until_done(&format!("cannot seed the feature store from {uri}"), attempt, shutdown).await
}

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
    let what = format!("cannot serve version {} from {}", flags.model_version, flags.model_uri);
    Ok(retry_until_done(&what, attempt, shutdown).await)
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
            anyhow::ensure!(
                (0.0..=crate::seed::MAX_HOLDOUT).contains(&args.seed_holdout),
                "--seed-holdout must be between 0 and {}, not {}",
                crate::seed::MAX_HOLDOUT,
                args.seed_holdout
            );
            let metrics = reco_features::Metrics::register(&mut registry);
            let (service, handle) = reco_features::build(&args.features, &metrics).await?;
            let ready = Arc::new(AtomicBool::new(false));
            let admin = serve_admin(args.features.http, Arc::new(registry), ready.clone(), shutdown.clone());
            let grpc = async {
                if seed_features(&args, &service, &shutdown).await.is_none() {
                    return Ok(());
                }
                ready.store(true, Ordering::Relaxed);
                let addr = args.features.grpc;
                reco_proto::serve(reco_features::grpc_routes(service), addr, shutdown.clone().cancelled_owned())
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
