//! `reco standalone`: every service in one process on the embedded
//! defaults. The gateway calls the features, events, retrieval and ranking
//! implementations in-process (the same trait objects that `reco serve`
//! reaches over gRPC), one retrieval and ranking pair per model version
//! found in `--models`, and hot-reloads `MODELS/routing.yaml`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser};
use prometheus_client::registry::Registry;
use reco_gateway::{Backends, GatewayArgs, StaticBackends, VersionBackend, VersionSource};
use reco_model::artifacts::{files, load_uri_blocking};

/// Flags of `reco standalone`; the gateway's flags apply too.
#[derive(Debug, Args)]
pub struct StandaloneArgs {
    /// Directory of model versions: one sub-folder per version, as written by
    /// `reco train --out MODELS/<version>`, and optionally the routing file
    /// MODELS/routing.yaml (the operator's format). Without it, the only
    /// version serves all traffic.
    #[arg(long, env = "RECO_MODELS")]
    pub models: PathBuf,

    /// Feature snapshot, event log and vector indexes (default: MODELS/.state).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,

    /// Fill an empty feature store with the users and the interactions
    /// before the --seed-future part of this data set (`ml-100k` or a data
    /// directory), so replayed users start with their history.
    #[arg(long)]
    pub seed_data: Option<String>,

    /// The part of the trainer's per-user chronological split that replayed users
    /// click, left out of --seed-data with all that follows: `test` (each user's latest
    /// 10%), or `validation` (the 10% before it: clicks that `reco train --init-from` learns
    /// from, with test left to judge it).
    #[arg(long, value_enum, default_value_t = SeedFuture::Test, requires = "seed_data")]
    pub seed_future: SeedFuture,

    #[command(flatten)]
    pub gateway: GatewayArgs,
}

/// `--seed-future`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SeedFuture {
    Test,
    Validation,
}

impl From<SeedFuture> for reco_demo::replay::Future {
    fn from(future: SeedFuture) -> Self {
        match future {
            SeedFuture::Test => Self::Test,
            SeedFuture::Validation => Self::Validation,
        }
    }
}

/// The version sub-folders of `models` (those holding a `two_tower.json`), by name.
pub fn version_dirs(models: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let entries = std::fs::read_dir(models).with_context(|| format!("--models {}", models.display()))?;
    let mut versions = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.join(files::TWO_TOWER_CONFIG).is_file() {
            let name = path.file_name().and_then(|n| n.to_str()).map(str::to_owned);
            match name {
                Some(name) => versions.push((name, path)),
                None => tracing::warn!(path = %path.display(), "skipping a version folder whose name is not UTF-8"),
            }
        }
    }
    versions.sort();
    if versions.is_empty() {
        bail!("--models {}: no version folder (one written by `reco train --out DIR/<version>`)", models.display());
    }
    Ok(versions)
}

/// Parses a service's flags from `args`, so its defaults stay in one place.
fn service_args<T: Args>(args: &[String]) -> anyhow::Result<T> {
    #[derive(Parser)]
    struct Wrapper<T: Args> {
        #[command(flatten)]
        inner: T,
    }
    let argv = std::iter::once("reco".to_owned()).chain(args.iter().cloned());
    Ok(Wrapper::<T>::try_parse_from(argv)?.inner)
}

pub async fn run(mut args: StandaloneArgs) -> anyhow::Result<()> {
    let shutdown = reco_runtime::shutdown::shutdown_on_signal();
    let versions = version_dirs(&args.models)?;
    let data_dir = args.data_dir.clone().unwrap_or_else(|| args.models.join(".state"));
    let routing = args.models.join("routing.yaml");
    if args.gateway.routing_file.is_none() && routing.exists() {
        args.gateway.routing_file = Some(routing);
    }
    let pipeline = args.gateway.pipeline.clone();
    let data = data_dir.display().to_string();

    let mut registry = Registry::default();
    let gateway_metrics = reco_gateway::Metrics::register(&mut registry);
    let features_metrics = reco_features::Metrics::register(&mut registry);
    let retrieval_metrics = reco_retrieval::Metrics::register(&mut registry);
    let ranking_metrics = reco_ranking::Metrics::register(&mut registry);

    let features_args: reco_features::FeaturesArgs =
        service_args(&["--pipeline".into(), pipeline.clone(), "--data-dir".into(), data.clone()])?;
    let (features, features_handle) = reco_features::build(&features_args, &features_metrics).await?;

    let mut backends = Vec::new();
    let mut catalog = HashSet::new();
    for (version, dir) in &versions {
        let uri = dir.display().to_string();
        let base = ["--pipeline", &pipeline, "--model-version", version, "--model-uri", &uri].map(str::to_owned);
        let retrieval_args: reco_retrieval::RetrievalArgs =
            service_args(&[&base[..], &["--data-dir".into(), data.clone()]].concat())?;
        let ranking_args: reco_ranking::RankingArgs = service_args(&base)?;
        let artifacts = load_uri_blocking(&retrieval_args.version.model_uri)
            .await
            .map_err(reco_retrieval::BuildError::from)
            .with_context(|| format!("version {version}"))?;
        catalog.extend(artifacts.items.iter().map(|item| item.id.clone()));
        let ranking = reco_ranking::RankingService::new(
            artifacts.clone(),
            version.clone(),
            &ranking_args.settings(),
            ranking_metrics.clone(),
        )?;
        let retrieval = reco_retrieval::build(&retrieval_args, artifacts, retrieval_metrics.clone())
            .await
            .with_context(|| format!("version {version}"))?;
        tracing::info!(version, dir = %dir.display(), "version loaded");
        backends.push((version.clone(), VersionBackend { retrieval: Arc::new(retrieval), ranking: Arc::new(ranking) }));
    }
    features.set_catalog(catalog);
    if let Some(data) = &args.seed_data {
        let (data, future) = (data.clone(), args.seed_future);
        let seed = tokio::task::spawn_blocking(move || {
            let dir = reco_trainer::pipeline::resolve_data(&data)?;
            crate::seed::seed_material(&dir, crate::seed::Holdout::Future(future.into()))
        })
        .await??;
        let outcome = features.seed(&seed.users, &seed.interactions).await?;
        let (users, interactions) = (seed.users.len(), seed.interactions.len());
        tracing::info!(?outcome, users, interactions, "feature store seeding");
    }

    let backends = Backends {
        features: Arc::new(features.clone()),
        events: Arc::new(features),
        versions: VersionSource::Static(Arc::new(StaticBackends::new(backends))),
    };
    let served =
        reco_gateway::serve(args.gateway, backends, gateway_metrics, Arc::new(registry), shutdown.cancelled_owned())
            .await;
    // Flush the event log and snapshot the features even when serving failed.
    features_handle.shutdown().await?;
    served?;
    Ok(())
}
