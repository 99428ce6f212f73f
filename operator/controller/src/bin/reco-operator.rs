//! The reco operator: reconciles RecommenderPipelines and ModelVersions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::Parser;
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use prometheus_client::registry::Registry;
use reco_operator::controller::{self, WatchScope};
use reco_operator::resources::{DEFAULT_SERVICES_IMAGE, Defaults};
use reco_operator::sources::ClusterMetricSources;
use reco_operator::telemetry::OperatorMetrics;
use reco_runtime::logging::{self, LogFormat};
use tracing::{info, warn};

/// Reconciles reco RecommenderPipelines and ModelVersions: deploys the
/// serving services and rolls each new model version out through shadow and
/// canary steps, promoting or rolling back on live click-through rate.
///
/// It talks to the cluster of the current kubeconfig or in-cluster service
/// account. Log level comes from RUST_LOG (default info).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "RECO_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Namespaces to watch, comma separated; empty watches all namespaces.
    #[arg(long, env = "RECO_WATCH_NAMESPACES", value_delimiter = ',', default_value = "")]
    watch_namespaces: Vec<String>,
    /// Elect a leader on a Lease so that only one replica reconciles.
    #[arg(long, env = "RECO_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "RECO_LEASE_NAME", default_value = "reco-operator")]
    lease_name: String,
    /// Namespace of the Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's name in the Lease and in Events.
    #[arg(long, env = "POD_NAME", default_value = "reco-operator")]
    identity: String,
    /// Log format.
    #[arg(long, env = "RECO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    /// Image of the reco services for pipelines whose spec names none: the
    /// release matching this operator by default, so an upgrade moves them.
    #[arg(long, env = "RECO_SERVICES_IMAGE", default_value = DEFAULT_SERVICES_IMAGE, value_parser = pinned_image)]
    services_image: String,
}

/// An image reference pinned to a tag or digest: `latest` would let pods of
/// one pipeline run different code.
fn pinned_image(image: &str) -> Result<String, String> {
    if image.is_empty() || image.ends_with(":latest") {
        return Err(format!("{image:?} must name an image pinned to a tag or digest other than latest"));
    }
    Ok(image.to_owned())
}

/// How long a Lease is valid after the leader's last renewal.
const LEASE_SECONDS: u64 = 15;
/// The leader renews this long before its Lease would expire.
const LEASE_GRACE_SECONDS: u64 = 5;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    logging::init(args.log_format);
    reco_runtime::tls::install_crypto_provider();
    let shutdown = reco_runtime::shutdown::shutdown_on_signal();

    let mut registry = Registry::default();
    let metrics = Arc::new(OperatorMetrics::register(&mut registry));
    // Ready once the API client works.
    let ready = Arc::new(AtomicBool::new(false));
    let admin = tokio::spawn(reco_runtime::admin::serve_admin(
        args.metrics_addr,
        Arc::new(registry),
        {
            let ready = ready.clone();
            move || ready.load(Ordering::Relaxed)
        },
        shutdown.clone().cancelled_owned(),
    ));

    let client = Client::try_default().await.context("no Kubernetes configuration (kubeconfig or in-cluster)")?;
    ready.store(true, Ordering::Relaxed);
    let scope = WatchScope { namespaces: args.watch_namespaces.into_iter().filter(|n| !n.is_empty()).collect() };
    let defaults = Defaults { services_image: args.services_image };
    let sources = Arc::new(ClusterMetricSources::new(client.clone()));

    if args.leader_election {
        let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
            .with_namespace(&args.lease_namespace)
            .with_identity(&args.identity)
            .with_field_manager(reco_api::FIELD_MANAGER)
            // client-go's defaults: a standby takes over within 15 s of a crash.
            .with_duration(LEASE_SECONDS)
            .with_grace(LEASE_GRACE_SECONDS)
            .build()
            .await
            .context("creating the leader-election lease manager")?;
        let (mut leader, lease_task) = manager.watch().await;
        info!(lease = %args.lease_name, identity = %args.identity, "waiting for leadership");
        tokio::select! {
            _ = leader.wait_for(|is_leader| *is_leader) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        info!("leading");
        let lost_or_stopped = {
            let stop = shutdown.clone().cancelled_owned();
            async move {
                tokio::select! {
                    _ = leader.wait_for(|is_leader| !*is_leader) => warn!("lost leadership; stopping"),
                    _ = stop => {}
                }
            }
        };
        controller::run(client, scope, defaults, &args.identity, metrics, sources, lost_or_stopped).await;
        // The leadership receiver is gone with the controller: the lease task
        // releases the Lease so that a standby replica takes over at once.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), lease_task).await;
    } else {
        controller::run(client, scope, defaults, &args.identity, metrics, sources, shutdown.cancelled_owned()).await;
    }
    admin.abort();
    Ok(())
}
