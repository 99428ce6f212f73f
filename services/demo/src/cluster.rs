//! `reco demo --cluster`: the demo through the operator on a Kubernetes
//! cluster, as a user runs it. The operator must already run there (the
//! chart) and pods must be able to start (a kubelet, or `reco-node` on one
//! machine: `make demo-cluster` sets all of it up).
//!
//! What this does, in order: uploads v1, v2 and the broken v3 (trained or
//! taken from the cache, as `reco demo` does) and the users' history to an
//! object store; applies a RecommenderPipeline, a NodePort Service for its
//! gateway and v1 with `kubectl`; waits until the gateway serves v1; replays
//! users against the node port; applies v2 and then v3 with `kubectl` and
//! follows their rollouts in the pipeline's status, written by the
//! operator, which reads CTR from Prometheus. `report.json` and `ctr.png`
//! as `reco demo` writes them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kube::Client;
use kube::api::Api;
use reco_api::{ModelVersion, RecommenderPipeline, RecommenderPipelineStatus};
use reco_artifacts::StoreOptions;
use reco_operator::status::{engine_phase, history_entry, report_of};
use reco_rollout::engine::step_label;
use reco_rollout::{Cause, VersionPhase};
use serde_json::{Value, json};

use crate::models::{self, BETTER, BROKEN, STABLE};
use crate::report::{DemoReport, RequestTotals, RolloutStart, TickHead, TimelineEntry, Traffic, VersionOutcome};
use crate::scenario::{DemoError, DemoOptions, WARMUP, start_replay, write_report};
use crate::sim::{SimStats, Simulator};

/// Where the cluster demo runs and how it reaches what runs there.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub demo: DemoOptions,
    /// Namespace of the pipeline (it must exist, with the credentials Secret).
    pub namespace: String,
    /// Object-store prefix the versions and the history are uploaded under
    /// (`s3://bucket/prefix`); this process uploads with the store's usual
    /// environment (`AWS_*`), the pods read with `credentials_secret`.
    pub store: String,
    /// Secret of the pods' object-store credentials (`spec.artifacts.credentialsSecret`).
    pub credentials_secret: Option<String>,
    /// Prometheus as the operator reaches it (`spec.rollout.analysis.prometheusUrl`);
    /// this process reads the counters back from it at the end.
    pub prometheus_url: String,
    /// The node port of the gateway: this process sends the users' requests to `127.0.0.1:<port>`.
    pub gateway_node_port: u16,
    /// The kubectl that applies the manifests.
    pub kubectl: PathBuf,
}

/// The pipeline's spec: the demo's rollout policy read from Prometheus, the
/// object store's credentials, the users' history (held-out future left out).
pub fn pipeline_manifest(opts: &ClusterOptions, seed_uri: &str) -> Result<Value, DemoError> {
    let demo = &opts.demo;
    let mut settings: Vec<(&[&str], Value)> = vec![
        (&["rollout", "analysis", "source"], json!("Prometheus")),
        (&["rollout", "analysis", "prometheusUrl"], json!(opts.prometheus_url)),
        (&["gateway", "deadlineMs"], json!(demo.deadline_ms)),
        (&["features", "seed"], json!({"uri": seed_uri, "holdoutFraction": crate::replay::HOLDOUT_FRACTION})),
    ];
    if let Some(secret) = &opts.credentials_secret {
        settings.push((&["artifacts", "credentialsSecret"], json!(secret)));
    }
    Ok(json!({
        "apiVersion": "reco.seed.dev/v1alpha1",
        "kind": "RecommenderPipeline",
        "metadata": {"name": demo.pipeline, "namespace": opts.namespace},
        "spec": with_settings(&demo.policy_text, settings)?,
    }))
}

/// The pipeline spec `spec_yaml` (the demo policy, or a whole spec from
/// `--policy`) with each setting at its path, everything else kept. Pure.
fn with_settings(spec_yaml: &str, settings: Vec<(&[&str], Value)>) -> Result<Value, DemoError> {
    let mut spec: Value =
        serde_saphyr::from_str(spec_yaml).map_err(|e| DemoError::Serialize(format!("the rollout policy: {e}")))?;
    for (path, value) in settings {
        let mut at = &mut spec;
        for key in path {
            if !at.is_object() {
                *at = json!({});
            }
            at = &mut at[*key];
        }
        *at = value;
    }
    Ok(spec)
}

/// A NodePort Service in front of the pipeline's gateway pods, as a user
/// exposes a gateway to a load test (`kubectl expose`).
pub fn node_port_manifest(opts: &ClusterOptions) -> Value {
    let pipeline = &opts.demo.pipeline;
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": format!("{pipeline}-gateway-node-port"), "namespace": opts.namespace},
        "spec": {
            "type": "NodePort",
            "selector": {"app.kubernetes.io/instance": pipeline, "app.kubernetes.io/component": "gateway"},
            "ports": [{"name": "http", "port": 8080, "targetPort": "http", "nodePort": opts.gateway_node_port, "protocol": "TCP"}],
        },
    })
}

pub fn version_manifest(opts: &ClusterOptions, version: &str, uri: &str, digest: &str) -> Value {
    json!({
        "apiVersion": "reco.seed.dev/v1alpha1",
        "kind": "ModelVersion",
        "metadata": {"name": version, "namespace": opts.namespace},
        "spec": {"pipeline": opts.demo.pipeline, "artifactUri": uri, "artifactDigest": digest},
    })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DemoError + '_ {
    move |source| DemoError::Io { path: path.to_owned(), source }
}

/// Writes `manifests/<name>.yaml` in the output folder and applies it with kubectl.
fn apply(opts: &ClusterOptions, name: &str, objects: &[Value]) -> Result<PathBuf, DemoError> {
    let dir = opts.demo.out.join("manifests");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let path = dir.join(format!("{name}.yaml"));
    let mut text = String::new();
    for object in objects {
        text.push_str("---\n");
        text.push_str(&serde_saphyr::to_string(object).map_err(|e| DemoError::Serialize(e.to_string()))?);
    }
    std::fs::write(&path, text).map_err(io(&path))?;
    let out = std::process::Command::new(&opts.kubectl)
        .args(["apply", "--server-side", "--field-manager=reco-demo", "-f"])
        .arg(&path)
        .output()
        .map_err(io(&opts.kubectl))?;
    if !out.status.success() {
        return Err(DemoError::Cluster(format!(
            "kubectl apply -f {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    print!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(path)
}

/// Copies `dir` into `to` with a fresh manifest (a copy may have been
/// changed since its manifest was written), uploads it to `uri`; its digest.
async fn upload(dir: &Path, to: &Path, uri: &str) -> Result<String, DemoError> {
    models::copy_version(dir, to)?;
    let manifest = to.join(reco_artifacts::manifest::MANIFEST);
    if manifest.exists() {
        // A hard link into the cache: unlink it, never write through it.
        std::fs::remove_file(&manifest).map_err(io(&manifest))?;
    }
    let digest = reco_artifacts::upload(to, uri, &StoreOptions::default())
        .await
        .map_err(|e| DemoError::Cluster(format!("uploading {} to {uri}: {e}", to.display())))?;
    println!("uploaded {uri} ({digest})");
    Ok(digest.to_string())
}

/// A running cluster demo: its kube client, traffic and timeline.
struct ClusterDemo {
    opts: ClusterOptions,
    pipelines: Api<RecommenderPipeline>,
    versions: Api<ModelVersion>,
    traffic_started: Instant,
    sim: Option<Simulator>,
    timeline: Vec<TimelineEntry>,
    outcomes: BTreeMap<String, VersionOutcome>,
    /// The time of the newest transition already shown.
    seen_transitions: Option<jiff::Timestamp>,
}

impl ClusterDemo {
    fn traffic(&self) -> SimStats {
        self.sim.as_ref().map(Simulator::stats).unwrap_or_default()
    }

    async fn status(&self) -> Result<RecommenderPipelineStatus, DemoError> {
        let pipeline = self.pipelines.get_status(&self.opts.demo.pipeline).await.map_err(kube_error)?;
        Ok(pipeline.status.unwrap_or_default())
    }

    async fn version_status(&self, version: &str) -> Result<Option<reco_api::ModelVersionStatus>, DemoError> {
        Ok(self.versions.get_status(version).await.map_err(kube_error)?.status)
    }

    /// One timeline entry from the status the operator wrote.
    fn entry(&mut self, version: &str, status: &RecommenderPipelineStatus, phase: VersionPhase) -> TimelineEntry {
        let policy = &self.opts.demo.policy.policy;
        let step = match status.candidate.as_ref().filter(|c| c.version == version) {
            Some(candidate) => step_label(policy, candidate.step.saturating_sub(1)),
            None => "done".to_owned(),
        };
        let analysis = status.last_analysis.as_ref().filter(|a| a.version == version).map(report_of);
        let since = self.seen_transitions;
        let new: Vec<_> = status.history.iter().filter(|t| since.is_none_or(|s| t.time.0 > s)).collect();
        if let Some(last) = new.last() {
            self.seen_transitions = Some(last.time.0);
        }
        let head = TickHead {
            t: self.traffic_started.elapsed().as_secs_f64(),
            version: version.to_owned(),
            phase,
            step,
            weight: status.canary_weight,
            stable: status.stable_version.clone().unwrap_or_default(),
            traffic: self.traffic().versions,
        };
        let transitions: Vec<_> = new.into_iter().map(history_entry).collect();
        TimelineEntry::new(head, analysis.as_ref(), "no look yet", &transitions)
    }

    /// Applies `version` and follows its rollout until the operator
    /// promotes, rolls back or fails it; `hook` sees every tick (tests inject faults there).
    async fn roll_out(
        &mut self,
        version: &str,
        manifest: &Value,
        started: Instant,
        hook: &mut dyn FnMut(&TimelineEntry),
    ) -> Result<(), DemoError> {
        let start = RolloutStart::now(version, &self.traffic());
        apply(&self.opts, version, std::slice::from_ref(manifest))?;
        let mut transitions = Vec::new();
        loop {
            if started.elapsed() > self.opts.demo.max_wall {
                return Err(DemoError::Timeout {
                    version: version.to_owned(),
                    limit_s: self.opts.demo.max_wall.as_secs(),
                });
            }
            let status = self.status().await?;
            let recorded = self.version_status(version).await?;
            let phase = recorded.as_ref().and_then(|s| s.phase).map_or(VersionPhase::Pending, engine_phase);
            let entry = self.entry(version, &status, phase);
            if self.opts.demo.print_timeline {
                println!("{}", entry.line());
            }
            transitions.extend(entry.transitions.iter().filter(|t| t.starts_with(&format!("{version} "))).cloned());
            hook(&entry);
            self.timeline.push(entry);
            if matches!(phase, VersionPhase::Stable | VersionPhase::RolledBack | VersionPhase::Failed) {
                let decided_by = status
                    .history
                    .iter()
                    .map(history_entry)
                    .rfind(|h| h.version == version && h.to == phase)
                    .map_or(Cause::Lifecycle, |h| h.cause);
                let reason = recorded.and_then(|s| s.reason).unwrap_or_default();
                let outcome = start.outcome(phase, (decided_by, reason), transitions, &self.traffic(), started);
                println!("==> {version}: {} after {:.0} s: {}", outcome.outcome, outcome.wall_seconds, outcome.reason);
                self.outcomes.insert(version.to_owned(), outcome);
                return Ok(());
            }
            tokio::time::sleep(self.opts.demo.policy.interval).await;
        }
    }
}

fn kube_error(e: kube::Error) -> DemoError {
    DemoError::Cluster(e.to_string())
}

/// Waits until the gateway answers a recommendation from `version` through the node port.
async fn wait_for_gateway(base: &reqwest::Url, version: &str, within: Duration) -> Result<(), DemoError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| DemoError::Cluster(format!("HTTP client: {e}")))?;
    let url = base.join("v1/recommend").map_err(|e| DemoError::Cluster(e.to_string()))?;
    let deadline = Instant::now() + within;
    let mut last = String::from("no answer yet");
    let mut shown = Instant::now();
    while Instant::now() < deadline {
        let answer = client.post(url.clone()).json(&json!({"user_id": "1", "page_size": 5})).send().await;
        match answer {
            Ok(r) if r.status().is_success() => {
                let body: Value = r.json().await.unwrap_or_default();
                if body["model_version"] == version {
                    return Ok(());
                }
                last = format!("served by {}", body["model_version"]);
            }
            Ok(r) => last = format!("HTTP {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        if shown.elapsed() > Duration::from_secs(15) {
            println!("waiting for the gateway at {base} to serve {version} ({last})");
            shown = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(DemoError::Cluster(format!("the gateway at {base} did not serve {version} within {within:?}: {last}")))
}

/// The whole scenario on the cluster: v1 stable, v2 promoted, v3 rolled
/// back. `hook` sees every tick of the two rollouts.
pub async fn run_cluster_demo(
    opts: ClusterOptions,
    hook: &mut dyn FnMut(&TimelineEntry),
) -> Result<DemoReport, DemoError> {
    let started = Instant::now();
    let demo = &opts.demo;
    let out = demo.out.clone();
    std::fs::create_dir_all(&out).map_err(io(&out))?;
    let client =
        Client::try_default().await.map_err(|e| DemoError::Cluster(format!("no cluster (KUBECONFIG): {e}")))?;

    let (model_opts, cache_root) = (demo.models.clone(), demo.cache_root.clone());
    let cached = tokio::task::spawn_blocking(move || models::ensure_models(&model_opts, &cache_root))
        .await
        .map_err(|e| DemoError::Join(e.to_string()))??;
    let prefix = format!("{}/{}", opts.store.trim_end_matches('/'), demo.pipeline);
    let staged = out.join("upload");
    let seed_uri = format!("{prefix}/history");
    upload(&demo.models.data, &staged.join("history"), &seed_uri).await?;
    let mut manifests = BTreeMap::new();
    for (version, dir) in [(STABLE, &cached.v1), (BETTER, &cached.v2), (BROKEN, &cached.v3)] {
        let uri = format!("{prefix}/{version}");
        let digest = upload(dir, &staged.join(version), &uri).await?;
        manifests.insert(version, version_manifest(&opts, version, &uri, &digest));
    }

    apply(&opts, "pipeline", &[pipeline_manifest(&opts, &seed_uri)?, node_port_manifest(&opts)])?;
    apply(&opts, STABLE, &[manifests[STABLE].clone()])?;
    let base: reqwest::Url = format!("http://127.0.0.1:{}/", opts.gateway_node_port)
        .parse()
        .map_err(|e| DemoError::Cluster(format!("gateway URL: {e}")))?;
    let ready_within = demo.ready_timeout.max(Duration::from_secs(300));
    println!("waiting for the operator to deploy {STABLE} and the gateway to serve it (at most {ready_within:?})");
    wait_for_gateway(&base, STABLE, ready_within).await?;
    println!("{STABLE} serves through {base} after {:.0} s", started.elapsed().as_secs_f64());

    // One retry, as a client of a replicated gateway does: a pod that goes
    // away fails the requests it had, the node port sends the retry to another.
    let sim = start_replay(demo, base.clone(), 1).await?;
    let mut run = ClusterDemo {
        pipelines: Api::namespaced(client.clone(), &opts.namespace),
        versions: Api::namespaced(client, &opts.namespace),
        opts: opts.clone(),
        traffic_started: Instant::now(),
        sim: Some(sim),
        timeline: Vec::new(),
        outcomes: BTreeMap::new(),
        seen_transitions: None,
    };
    tokio::time::sleep(WARMUP).await;
    for version in [BETTER, BROKEN] {
        run.roll_out(version, &manifests[version], started, hook).await?;
    }
    tokio::time::sleep(demo.policy.interval).await;

    let stats = match run.sim.take() {
        Some(sim) => sim.stop().await,
        None => SimStats::default(),
    };
    // Two scrape intervals: the last requests are in the TSDB.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let prometheus = reqwest::Url::parse(&opts.prometheus_url).map_err(|e| DemoError::Cluster(e.to_string()))?;
    let report = DemoReport {
        seed: demo.seed,
        metrics_source: "prometheus (read by the operator)".to_owned(),
        policy: demo.policy_text.clone(),
        rate: demo.rate,
        wall_seconds: started.elapsed().as_secs_f64(),
        versions: run.outcomes.clone(),
        traffic: stats.versions.iter().map(|(v, c)| (v.clone(), Traffic::from(*c))).collect(),
        requests: RequestTotals::of(&stats),
        prometheus: crate::stack::prometheus_counters(&prometheus, &demo.pipeline).await,
        timeline: std::mem::take(&mut run.timeline),
    };
    write_report(&out, &report)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_go_into_the_spec_and_keep_what_it_had() {
        let spec = "gateway: {replicas: 3}\nrollout:\n  steps: [{shadow: {duration: 10s}}]\n";
        let settings: Vec<(&[&str], Value)> = vec![
            (&["gateway", "deadlineMs"], json!(500)),
            (&["rollout", "analysis", "source"], json!("Prometheus")),
            (&["features", "seed"], json!({"uri": "s3://b/h"})),
        ];
        let merged = with_settings(spec, settings).unwrap();
        assert_eq!(merged["gateway"], json!({"replicas": 3, "deadlineMs": 500}));
        assert_eq!(merged["rollout"]["steps"][0]["shadow"]["duration"], "10s");
        assert_eq!(merged["rollout"]["analysis"]["source"], "Prometheus");
        assert_eq!(merged["features"]["seed"]["uri"], "s3://b/h");
        assert!(with_settings("steps: [unclosed", Vec::new()).is_err());
    }

    #[test]
    fn the_demo_policy_makes_a_valid_pipeline_spec() {
        let spec =
            with_settings(crate::policy::DEMO_PIPELINE_SPEC, vec![(&["gateway", "deadlineMs"], json!(1000))]).unwrap();
        let parsed: reco_api::RecommenderPipelineSpec = serde_json::from_value(spec).expect("the CRD's shape");
        assert_eq!(parsed.gateway.deadline_ms, 1000);
    }
}
