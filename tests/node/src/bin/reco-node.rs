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
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    reco_runtime::tls::install_crypto_provider();
    let client = kube::Client::try_default().await?;
    let config = AgentConfig {
        state_dir: args.state_dir,
        network: args.network,
        namespaces: args.namespaces,
        period: Duration::from_millis(args.period_ms),
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    agent::run(client, config, shutdown).await?;
    Ok(())
}
