//! `reco demo`: flags, defaults and the summary printed at the end. The
//! scenario itself lives in the `reco-demo` crate.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use reco_demo::cluster::{ClusterOptions, run_cluster_demo};
use reco_demo::models::ModelOptions;
use reco_demo::policy::{DEMO_PIPELINE_SPEC, parse_policy};
use reco_demo::scenario::{DemoOptions, run_aa, run_demo};

/// Flags of `reco demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Output directory: models, runner state, logs, report.json, ctr.png.
    #[arg(long, default_value = "demo-out")]
    pub out: PathBuf,

    /// Read the metrics through a real Prometheus (PROMETHEUS_BIN, else
    /// /usr/bin/prometheus) scraping the gateway every second, instead of
    /// scraping the gateway's /metrics directly.
    #[arg(long)]
    pub prometheus: bool,

    /// Seed of the models and of the simulated users' choices.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// Recommend requests per second (open loop).
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,

    /// Most requests in flight; arrivals beyond it are shed and counted.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,

    /// Probability of a click on a shown item outside the user's future.
    #[arg(long, default_value_t = 0.001)]
    pub noise: f64,

    /// Items asked for per request (1 to 100).
    #[arg(long, default_value_t = 10)]
    pub page_size: u32,

    /// Time limit of the whole run, like 90s, 20m or 1h.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub duration: Duration,

    /// Data set: `ml-100k` (from the cache filled by scripts/ensure-ml100k.sh) or a directory.
    #[arg(long, default_value = "ml-100k")]
    pub data: String,

    /// Keep only the first N users (quicker training and tests).
    #[arg(long)]
    pub max_users: Option<usize>,

    /// v1's two-tower embedding width (v1 is the smaller, weaker model).
    #[arg(long, default_value_t = 8)]
    pub v1_embedding_dim: i64,

    /// v1's two-tower epochs.
    #[arg(long, default_value_t = 1)]
    pub v1_epochs: usize,

    /// v1's ranker candidates per source.
    #[arg(long, default_value_t = 10)]
    pub v1_candidates: usize,

    /// v1's ranker epochs.
    #[arg(long, default_value_t = 1)]
    pub v1_ranker_epochs: usize,

    /// v2's maximum two-tower epochs.
    #[arg(long, default_value_t = 30)]
    pub v2_epochs: usize,

    /// libtorch threads while training.
    #[arg(long, env = "RECO_THREADS")]
    pub threads: Option<usize>,

    /// Rollout policy: a RecommenderPipeline spec (YAML) with a `rollout`
    /// section; default: the built-in demo policy (see docs/demo.md).
    #[arg(long)]
    pub policy: Option<PathBuf>,

    /// Pipeline name (label of the metrics, routing table).
    #[arg(long, default_value = "demo")]
    pub pipeline: String,

    /// Continue the rollouts from the runner state in --out.
    #[arg(long)]
    pub resume: bool,

    /// Instead of the scenario, run N A/A rollouts (v1 against a copy of
    /// itself) and count false rollbacks (aa-report.json).
    #[arg(long)]
    pub aa_runs: Option<usize>,

    /// How long `reco standalone` may take to become ready.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub ready_timeout: Duration,

    /// The standalone gateway's per-request deadline in milliseconds (past it
    /// a request gets fallback items and counts as an error).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    pub deadline_ms: u32,

    /// Cache of trained demo models (default: ~/.cache/reco/demo-models).
    #[arg(long, env = "RECO_DEMO_CACHE")]
    pub cache_dir: Option<PathBuf>,

    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Flags of `reco demo --cluster`.
#[derive(Debug, Args)]
#[command(next_help_heading = "Through the operator on a cluster (make demo-cluster sets one up)")]
pub struct ClusterArgs {
    /// Run the scenario through the operator on the cluster of KUBECONFIG:
    /// upload the versions and the users' history to --store, apply the
    /// pipeline and the versions with kubectl, replay users against the
    /// gateway's node port and follow the rollouts the operator decides on
    /// CTR read from --prometheus-url. The operator must run there.
    #[arg(long)]
    pub cluster: bool,

    /// Namespace of the pipeline (it must exist).
    #[arg(long, default_value = "reco-demo", requires = "cluster")]
    pub namespace: String,

    /// Object-store prefix to upload the versions and the history to, e.g.
    /// `s3://reco-demo`; credentials and endpoint from the environment
    /// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT, ...).
    #[arg(long, requires = "cluster")]
    pub store: Option<String>,

    /// Secret in --namespace with the pods' object-store credentials.
    #[arg(long, requires = "cluster")]
    pub credentials_secret: Option<String>,

    /// Prometheus as the operator reaches it, e.g. `http://10.89.0.1:9090`
    /// (it must scrape the gateway pods with job `<pipeline>-gateway`).
    #[arg(long, requires = "cluster")]
    pub prometheus_url: Option<String>,

    /// Node port of the gateway Service the demo creates; requests go to 127.0.0.1 at it.
    #[arg(long, default_value_t = 30080, requires = "cluster")]
    pub gateway_node_port: u16,

    /// kubectl to apply the manifests with.
    #[arg(long, env = "KUBECTL", default_value = "kubectl", requires = "cluster")]
    pub kubectl: PathBuf,
}

/// `90s`, `20m`, `1h` or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 90s, 20m or 1h"))?;
    let seconds = match unit {
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?}: unit must be s, m or h")),
    };
    if !(seconds.is_finite() && seconds > 0.0 && seconds < 1e9) {
        return Err(format!("{text:?} must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// The scenario's options from the flags.
pub fn options(a: &DemoArgs) -> anyhow::Result<DemoOptions> {
    let policy_text = match &a.policy {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("--policy {}", path.display()))?,
        None => DEMO_PIPELINE_SPEC.to_owned(),
    };
    let policy = parse_policy(&policy_text).context("--policy")?;
    let prometheus = a.prometheus.then(reco_demo::stack::prometheus_bin);
    Ok(DemoOptions {
        out: a.out.clone(),
        reco_bin: std::env::current_exe().context("locating the reco binary")?,
        models: ModelOptions {
            data: reco_trainer::pipeline::resolve_data(&a.data).with_context(|| format!("--data {}", a.data))?,
            seed: a.seed,
            pipeline: a.pipeline.clone(),
            max_users: a.max_users,
            v1_embedding_dim: a.v1_embedding_dim,
            v1_epochs: a.v1_epochs,
            v1_candidates: a.v1_candidates,
            v1_ranker_epochs: a.v1_ranker_epochs,
            v2_epochs: a.v2_epochs,
            threads: a.threads,
        },
        cache_root: a.cache_dir.clone().unwrap_or_else(|| reco_trainer::pipeline::cache_root().join("demo-models")),
        prometheus,
        pipeline: a.pipeline.clone(),
        policy,
        policy_text,
        seed: a.seed,
        rate: a.rate,
        concurrency: a.concurrency,
        noise: a.noise,
        page_size: a.page_size,
        max_wall: a.duration,
        ready_timeout: a.ready_timeout,
        deadline_ms: a.deadline_ms,
        resume: a.resume,
        print_timeline: true,
    })
}

pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    let opts = options(&a)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    if a.cluster.cluster {
        if a.aa_runs.is_some() || a.resume || a.prometheus {
            bail!(
                "--cluster runs the scenario once through the operator: --aa-runs, --resume and --prometheus do not apply"
            );
        }
        let c = &a.cluster;
        let cluster = ClusterOptions {
            demo: opts,
            namespace: c.namespace.clone(),
            store: c.store.clone().context("--cluster needs --store (e.g. s3://reco-demo)")?,
            credentials_secret: c.credentials_secret.clone(),
            prometheus_url: c.prometheus_url.clone().context("--cluster needs --prometheus-url")?,
            gateway_node_port: c.gateway_node_port,
            kubectl: c.kubectl.clone(),
        };
        reco_runtime::tls::install_crypto_provider();
        let report = runtime.block_on(run_cluster_demo(cluster, &mut |_| {}))?;
        return summarize(&a, &report);
    }
    if let Some(runs) = a.aa_runs {
        if runs == 0 {
            bail!("--aa-runs must be at least 1");
        }
        let report = runtime.block_on(run_aa(opts, runs))?;
        println!(
            "A/A: {} runs, {} promoted, {} rolled back by the analysis (false rollbacks), {} by timeout; {} requests, {} failed",
            report.runs.len(),
            report.promoted,
            report.rolled_back_by_analysis,
            report.rolled_back_by_timeout,
            report.requests.total,
            report.requests.failed
        );
        println!("report: {}", a.out.join("aa-report.json").display());
        return Ok(());
    }
    let report = runtime.block_on(run_demo(opts, &mut |_| Vec::new()))?;
    summarize(&a, &report)
}

/// Prints how each version ended and the traffic; fails when a request failed.
fn summarize(a: &DemoArgs, report: &reco_demo::report::DemoReport) -> anyhow::Result<()> {
    println!();
    for (version, outcome) in &report.versions {
        println!(
            "{version}: {} after {:.0} s and {} impressions ({} on {version}); CTR {:.2}%: {}",
            outcome.outcome,
            outcome.wall_seconds,
            outcome.impressions_to_decision,
            outcome.candidate_impressions_to_decision,
            100.0 * outcome.ctr,
            outcome.reason
        );
    }
    for (version, traffic) in &report.traffic {
        println!(
            "{version}: {} requests ({} failed), {} impressions, {} clicks, CTR {:.2}%",
            traffic.requests,
            traffic.failed,
            traffic.impressions,
            traffic.clicks,
            100.0 * traffic.ctr
        );
    }
    println!(
        "requests: {} total, {} failed, {} shed at the in-flight cap; report: {}, chart: {}",
        report.requests.total,
        report.requests.failed,
        report.requests.shed,
        a.out.join("report.json").display(),
        a.out.join("ctr.png").display()
    );
    if report.requests.failed > 0 {
        bail!("{} requests failed", report.requests.failed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("20m"), Ok(Duration::from_secs(1200)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        for bad in ["", "m", "-5s", "0s", "5d", "1e300h", "NaNs", "5 parsecs"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
