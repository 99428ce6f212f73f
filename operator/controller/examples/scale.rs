//! Benchmark (not a test): how the operator copes with many pipelines.
//!
//! Starts the in-process Kubernetes API test double, runs the release
//! `reco-operator` binary as its own process against it (so its memory is
//! its own), creates N RecommenderPipelines with two ModelVersions each, and
//! measures the time until every pipeline has converged (v1 stable, v2 in
//! its first rollout step, objects applied), the median reconcile latency
//! from the operator's own histogram, and the operator's peak RSS.
//!
//! ```text
//! cargo build --release -p reco-operator --bins --examples
//! target/release/examples/scale [--pipelines 1000]
//! ```

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, stream};
use kube::api::{Api, PostParams};
use reco_api::{ModelVersion, RecommenderPipeline};
use reco_kube_testserver::TestApiServer;
use serde_json::json;

const NAMESPACE: &str = "bench";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pipelines: usize = std::env::args()
        .skip_while(|a| a != "--pipelines")
        .nth(1)
        .map(|n| n.parse())
        .transpose()
        .context("--pipelines takes a number")?
        .unwrap_or(1000);

    let server = TestApiServer::start().await?;
    for crd in reco_operator::crds::crds() {
        server.register_custom_resource(&crd)?;
    }
    let dir = std::env::temp_dir().join(format!("reco-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig(NAMESPACE))?;
    let metrics_port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let binary =
        std::env::current_exe()?.parent().and_then(|p| p.parent()).context("target dir")?.join("reco-operator");
    let mut operator = OperatorProcess(
        Command::new(&binary)
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "warn")
            .args(["--leader-election=false", "--log-format=text", &format!("--metrics-addr=127.0.0.1:{metrics_port}")])
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} (build it with --release first)", binary.display()))?,
    );

    let client = server.client();
    let rp_api: Api<RecommenderPipeline> = Api::namespaced(client.clone(), NAMESPACE);
    let mv_api: Api<ModelVersion> = Api::namespaced(client.clone(), NAMESPACE);
    let started = Instant::now();
    stream::iter(0..pipelines)
        .map(|i| {
            let (rp_api, mv_api) = (rp_api.clone(), mv_api.clone());
            async move {
                let name = format!("p{i:04}");
                let rp: RecommenderPipeline = serde_json::from_value(json!({
                    "apiVersion": "reco.seed.dev/v1alpha1", "kind": "RecommenderPipeline",
                    "metadata": {"name": name}, "spec": {"rollout": {"steps": [{"shadow": {"duration": "1h"}}, {"canary": {"weight": 10, "minImpressions": 1000}}]}},
                }))?;
                rp_api.create(&PostParams::default(), &rp).await?;
                for v in ["v1", "v2"] {
                    let mv: ModelVersion = serde_json::from_value(json!({
                        "apiVersion": "reco.seed.dev/v1alpha1", "kind": "ModelVersion",
                        "metadata": {"name": format!("{name}-{v}")},
                        "spec": {"pipeline": name, "artifactUri": format!("s3://models/{name}/{v}")},
                    }))?;
                    mv_api.create(&PostParams::default(), &mv).await?;
                    if v == "v1" {
                        // v1 must be the older version: creation timestamps have one-second resolution.
                        tokio::time::sleep(Duration::from_millis(1100)).await;
                    }
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    let created = started.elapsed();

    let converged_at = loop {
        let converged = server
            .objects("reco.seed.dev", "recommenderpipelines")
            .iter()
            .filter(|p| {
                let name = p["metadata"]["name"].as_str().unwrap_or_default();
                let rollout = &p["status"]["rollout"];
                rollout["stable"] == format!("{name}-v1") && rollout["candidate"]["version"] == format!("{name}-v2")
            })
            .count();
        if converged == pipelines {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("only {converged} of {pipelines} pipelines converged in 10 minutes");
        }
        operator.check_alive()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let metrics = reqwest_get(&format!("http://127.0.0.1:{metrics_port}/metrics")).await?;
    let median = histogram_quantile(&metrics, "reco_operator_reconcile_duration_seconds_bucket", 0.5)
        .context("no reconcile histogram")?;
    let reconciles = counter_sum(&metrics, "reco_operator_reconciles_total");
    let (rss, peak) = operator.memory_kib()?;

    println!(
        "| pipelines | model versions | create time | time to converge | reconciles | median reconcile | operator RSS (peak) |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {pipelines} | {} | {:.1} s | {:.1} s | {reconciles:.0} | {:.1} ms | {:.1} MiB ({:.1} MiB) |",
        pipelines * 2,
        created.as_secs_f64(),
        converged_at.as_secs_f64(),
        median * 1000.0,
        rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Kills the operator when the benchmark ends, however it ends.
struct OperatorProcess(Child);

impl OperatorProcess {
    fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.0.try_wait()? {
            Some(status) => bail!("reco-operator exited: {status}"),
            None => Ok(()),
        }
    }

    /// Current and peak resident set size, in KiB, from /proc.
    fn memory_kib(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))?;
        let field = |name: &str| {
            status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()?.parse().ok())
        };
        Ok((field("VmRSS:").context("VmRSS")?, field("VmHWM:").context("VmHWM")?))
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn reqwest_get(url: &str) -> anyhow::Result<String> {
    Ok(reqwest::get(url).await?.error_for_status()?.text().await?)
}

fn samples<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    text.lines().filter(move |l| l.starts_with(name)).filter_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        Some((series, value.parse().ok()?))
    })
}

fn counter_sum(text: &str, name: &str) -> f64 {
    samples(text, name).map(|(_, v)| v).sum()
}

/// `histogram_quantile` over the buckets of one histogram (summed over label sets).
fn histogram_quantile(text: &str, bucket: &str, q: f64) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for (series, count) in samples(text, bucket) {
        let le = series.split("le=\"").nth(1)?.split('"').next()?;
        let le: f64 = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
        match buckets.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += count,
            None => buckets.push((le, count)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let cumulative: Vec<(f64, u64)> = buckets.iter().map(|(le, c)| (*le, *c as u64)).collect();
    reco_rollout::analysis::quantile_from_histogram(q, &cumulative)
}
