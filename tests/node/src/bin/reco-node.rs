//! `reco-node`: the node agent of the test and demo control plane, a
//! stand-in for a kubelet (see `reco_node::agent` for what it does and
//! leaves out). Talks to the cluster of the current kubeconfig.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use reco_node::agent::{self, AgentConfig};

/// Runs the Deployments and StatefulSets of a Kubernetes API server as podman
/// containers, publishes Services as DNS names on a podman network, probes
/// the pods and writes the workloads' status. For tests and demos on one
/// machine; not a kubelet.
#[derive(Parser, Debug)]
#[command(name = "reco-node", version)]
struct Args {
    /// Where pods' volumes and claims live (host directories).
    #[arg(long, default_value = "/var/lib/reco-node")]
    state_dir: PathBuf,
    /// The podman bridge network the pods join (created if missing).
    #[arg(long, default_value = "reco")]
    network: String,
    /// Only run workloads of these namespaces (repeat; default: all).
    #[arg(long = "namespace")]
    namespaces: Vec<String>,
    /// How often pods are reconciled and probed.
    #[arg(long, default_value = "1000")]
    period_ms: u64,
    /// Keep this Prometheus file service discovery file up to date with the
    /// ready pods that Services select and that are annotated
    /// `prometheus.io/scrape: "true"` (job = the Service's name).
    #[arg(long)]
    prometheus_targets: Option<PathBuf>,
    /// Give pods no API access (no service account token, no forwarder to
    /// the API server).
    #[arg(long)]
    no_api_access: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    reco_runtime::tls::install_crypto_provider();
    let kube_config = kube::Config::infer().await?;
    let api_server = kube_config.cluster_url.authority().map(|a| a.to_string()).filter(|_| !args.no_api_access);
    let client = kube::Client::try_from(kube_config)?;
    let config = AgentConfig {
        state_dir: args.state_dir,
        network: args.network,
        namespaces: args.namespaces,
        period: Duration::from_millis(args.period_ms),
        api_server,
        prometheus_targets: args.prometheus_targets,
    };
    // SIGINT or SIGTERM: stop the pods and exit.
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    };
    agent::run(client, config, shutdown).await?;
    Ok(())
}
