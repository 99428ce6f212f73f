//! The scenario of `reco demo`: train (or reuse) v1, v2 and v3, serve them
//! with `reco standalone` as a child process, replay users against it, roll
//! v2 out (shadow, every canary step, promoted) and then v3 (rolled back),
//! and write `report.json` and `ctr.png`.
//!
//! [`Demo`] exposes the stages so tests can inject faults between ticks
//! ([`Fault`]); [`run_demo`] and [`run_aa`] compose them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use reco_metric_source::{MetricSource, PrometheusSource, ScrapeSource};
use reco_rollout::engine::step_label;
use reco_rollout::{Cause, VersionPhase};
use serde::{Deserialize, Serialize};

use crate::models::{self, BETTER, BROKEN, ModelOptions, STABLE};
use crate::policy::DemoPolicy;
use crate::replay::ReplayData;
use crate::report::{DemoReport, RequestTotals, RolloutStart, TickHead, TimelineEntry, Traffic, VersionOutcome};
use crate::runner::{self, LocalRunner, RunnerConfig};
use crate::sim::{SimConfig, SimStats, Simulator};
use crate::stack::{Gateway, GatewayConfig, Prometheus};

/// Traffic before the first rollout: the shadow step should not judge the
/// standalone's warm-up (first requests, caches).
pub const WARMUP: Duration = Duration::from_secs(10);

/// The copy of v1 that A/A runs roll out against v1.
pub const AA_COPY: &str = "v1-aa";

/// Everything a demo run is told.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Output directory: models, state, logs, `report.json`, `ctr.png`.
    pub out: PathBuf,
    /// The `reco` binary that runs `standalone` (normally the current executable).
    pub reco_bin: PathBuf,
    pub models: ModelOptions,
    /// Where trained models are cached (`~/.cache/reco/demo-models`).
    pub cache_root: PathBuf,
    /// `Some(prometheus binary)`: read metrics through a real Prometheus;
    /// `None`: scrape the gateway's `/metrics` directly.
    pub prometheus: Option<PathBuf>,
    pub pipeline: String,
    pub policy: DemoPolicy,
    /// The policy as written (for the report).
    pub policy_text: String,
    /// Simulator seed (user and noise choices).
    pub seed: u64,
    pub rate: f64,
    pub concurrency: usize,
    pub noise: f64,
    pub page_size: u32,
    /// The whole run fails past this.
    pub max_wall: Duration,
    /// How long `reco standalone` may take to become ready.
    pub ready_timeout: Duration,
    /// The gateway's per-request deadline (`--deadline-ms`).
    pub deadline_ms: u32,
    /// Continue from the runner state in `out` instead of starting over.
    pub resume: bool,
    /// Print one timeline line per tick on stdout.
    pub print_timeline: bool,
}

/// A fault to inject after a tick (tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    KillGateway,
    RestartGateway,
    KillPrometheus,
    RestartPrometheus,
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Models(#[from] models::ModelError),
    #[error(transparent)]
    Runner(#[from] runner::RunnerError),
    #[error(transparent)]
    Stack(#[from] crate::stack::StackError),
    #[error(transparent)]
    Replay(#[from] crate::replay::ReplayError),
    #[error(transparent)]
    Sim(#[from] crate::sim::SimError),
    #[error("metric source: {0}")]
    Source(#[from] reco_metric_source::SourceError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the demo ran past its time limit of {limit_s} s while rolling out {version}")]
    Timeout { version: String, limit_s: u64 },
    #[error("{0} was injected but the demo has no Prometheus (run with --prometheus)")]
    NoPrometheus(&'static str),
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("background task failed: {0}")]
    Join(String),
    #[error("cannot serialize the report: {0}")]
    Serialize(String),
    #[error("training {version} from the logged events failed ({status}); see {log}")]
    Child { version: String, status: String, log: PathBuf },
    #[error("{path}: {reason}")]
    Artifacts { path: PathBuf, reason: String },
}

/// What [`Demo::train_child`] trained: the child's figures beside its parent's, from the run's
/// `training.json` and `metrics.json` (test split, the served model).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChildTraining {
    pub events_read: u64,
    pub events_used: u64,
    pub ndcg_at_10: f64,
    pub parent_ndcg_at_10: f64,
    pub train_seconds: f64,
}

impl ChildTraining {
    fn read(dir: &Path, train_seconds: f64) -> Result<Self, DemoError> {
        let json = |name: &str| -> Result<serde_json::Value, DemoError> {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            serde_json::from_str(&text).map_err(|e| DemoError::Artifacts { path, reason: e.to_string() })
        };
        let (training, metrics) = (json("training.json")?, json("metrics.json")?);
        let number = |value: &serde_json::Value, what: &str| {
            value.as_f64().ok_or_else(|| DemoError::Artifacts { path: dir.to_owned(), reason: format!("no {what}") })
        };
        let events = &training["incremental"]["events"];
        Ok(Self {
            events_read: number(&events["rows"], "incremental.events.rows")? as u64,
            events_used: number(&events["used"], "incremental.events.used")? as u64,
            ndcg_at_10: number(&metrics["models"]["two_tower_ranker"]["ndcg@10"], "the child's NDCG@10")?,
            parent_ndcg_at_10: number(
                &metrics["models"]["parent_two_tower_ranker"]["ndcg@10"],
                "the parent's NDCG@10",
            )?,
            train_seconds,
        })
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DemoError + '_ {
    move |source| DemoError::Io { path: path.to_owned(), source }
}

enum Source {
    Scrape(ScrapeSource),
    Prometheus(PrometheusSource),
}

impl Source {
    fn as_dyn(&self) -> &dyn MetricSource {
        match self {
            Source::Scrape(source) => source,
            Source::Prometheus(source) => source,
        }
    }
}

/// A running demo: the serving process, its traffic and the local runner.
pub struct Demo {
    opts: DemoOptions,
    started: Instant,
    /// When the replayed users began: the timeline's (and chart's) zero.
    traffic_started: Instant,
    runner: LocalRunner,
    gateway: Gateway,
    prometheus: Option<Prometheus>,
    source: Source,
    sim: Option<Simulator>,
    timeline: Vec<TimelineEntry>,
    outcomes: BTreeMap<String, VersionOutcome>,
}

impl Demo {
    /// Prepares the models, starts `reco standalone` (and Prometheus), makes
    /// v1 stable and starts the traffic. With `aa_run`, also installs
    /// [`AA_COPY`] and salts the user assignment with the run number, so each
    /// A/A run puts a different set of users on the canary.
    pub async fn start(opts: DemoOptions, aa_run: Option<usize>) -> Result<Demo, DemoError> {
        let started = Instant::now();
        let models_dir = opts.out.join("models");
        std::fs::create_dir_all(&models_dir).map_err(io(&models_dir))?;
        let state_path = opts.out.join("state.json");
        if !opts.resume {
            for stale in [state_path.clone(), models_dir.join(runner::ROUTING_FILE)] {
                if stale.exists() {
                    std::fs::remove_file(&stale).map_err(io(&stale))?;
                }
            }
            // The standalone's feature store and event log (a new run starts from the seeded
            // histories) and Prometheus' TSDB (series of an earlier run would add up with this one's).
            for stale in [models_dir.join(".state"), opts.out.join("prometheus").join("data")] {
                if stale.exists() {
                    std::fs::remove_dir_all(&stale).map_err(io(&stale))?;
                }
            }
        }

        let (model_opts, cache_root) = (opts.models.clone(), opts.cache_root.clone());
        let cached = tokio::task::spawn_blocking(move || models::ensure_models(&model_opts, &cache_root))
            .await
            .map_err(|e| DemoError::Join(e.to_string()))??;
        println!("models: v1 {}, v2 {}, v3 {}", cached.v1.display(), cached.v2.display(), cached.v3.display());
        for (version, dir) in [(STABLE, &cached.v1), (BETTER, &cached.v2), (BROKEN, &cached.v3)] {
            models::copy_version(dir, &models_dir.join(version))?;
        }
        if aa_run.is_some() {
            models::copy_version(&cached.v1, &models_dir.join(AA_COPY))?;
        }

        let mut runner = LocalRunner::open(RunnerConfig {
            pipeline: opts.pipeline.clone(),
            salt: match aa_run {
                Some(run) => format!("{}-aa{run}", opts.pipeline),
                None => opts.pipeline.clone(),
            },
            state_path,
            models_dir: models_dir.clone(),
            policy: opts.policy.clone(),
        })?;
        runner.add_version(STABLE, Timestamp::now())?;
        runner.apply(None, Timestamp::now())?;

        let logs = opts.out.join("logs");
        std::fs::create_dir_all(&logs).map_err(io(&logs))?;
        let gateway = Gateway::start(GatewayConfig {
            bin: opts.reco_bin.clone(),
            models: models_dir.clone(),
            pipeline: opts.pipeline.clone(),
            seed_data: Some(opts.models.data.clone()),
            deadline_ms: opts.deadline_ms,
            token_key: format!("reco-demo-token-key-{:020}-{:020}", opts.seed, opts.seed.rotate_left(32)),
            log: logs.join("standalone.log"),
            ready_timeout: opts.ready_timeout,
        })
        .await?;
        println!("reco standalone (pid {}) ready at http://{}", gateway.pid().unwrap_or(0), gateway.addr());
        let (prometheus, source) = match &opts.prometheus {
            Some(bin) => {
                let prometheus = Prometheus::start(bin, &opts.out.join("prometheus"), gateway.addr()).await?;
                println!("Prometheus (pid {}) ready at {}", prometheus.pid().unwrap_or(0), prometheus.base());
                let source = PrometheusSource::new(prometheus.base())?
                    .with_min_range(Duration::from_secs(3))
                    .with_job(crate::stack::PROMETHEUS_JOB);
                (Some(prometheus), Source::Prometheus(source))
            }
            None => (None, Source::Scrape(ScrapeSource::new(vec![gateway.url("metrics")])?)),
        };
        if let Source::Scrape(scrape) = &source {
            // History from the start, so the first window has a baseline.
            let _ = scrape.scrape().await;
        }

        // The standalone is one process: a request it fails, it fails (no retry).
        let sim = start_replay(&opts, gateway.url(""), 0).await?;
        Ok(Demo {
            opts,
            started,
            traffic_started: Instant::now(),
            runner,
            gateway,
            prometheus,
            source,
            sim: Some(sim),
            timeline: Vec::new(),
            outcomes: BTreeMap::new(),
        })
    }

    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    pub fn prometheus(&self) -> Option<&Prometheus> {
        self.prometheus.as_ref()
    }

    pub fn runner(&self) -> &LocalRunner {
        &self.runner
    }

    pub fn timeline(&self) -> &[TimelineEntry] {
        &self.timeline
    }

    /// The simulator's counts so far.
    pub fn traffic(&self) -> SimStats {
        self.sim.as_ref().map(Simulator::stats).unwrap_or_default()
    }

    /// Rolls `version` out, one tick per analysis interval, until it is
    /// promoted or rolled back. `hook` sees every tick and may inject faults.
    pub async fn roll_out(
        &mut self,
        version: &str,
        hook: &mut dyn FnMut(&TimelineEntry) -> Vec<Fault>,
    ) -> Result<VersionOutcome, DemoError> {
        let start = RolloutStart::now(version, &self.traffic());
        self.runner.add_version(version, Timestamp::now())?;
        let mut transitions = Vec::new();
        loop {
            if self.started.elapsed() > self.opts.max_wall {
                return Err(DemoError::Timeout { version: version.to_owned(), limit_s: self.opts.max_wall.as_secs() });
            }
            let tick_start = Instant::now();
            let unavailable = self.gateway.check_ready().await.err();
            let tick = self.runner.tick(self.source.as_dyn(), unavailable, Timestamp::now()).await?;
            let entry = self.entry(version, &tick);
            if self.opts.print_timeline {
                println!("{}", entry.line());
            }
            transitions.extend(entry.transitions.iter().cloned());
            let faults = hook(&entry);
            self.timeline.push(entry);
            for fault in faults {
                self.inject(fault).await?;
            }
            let phase = runner::phase_of(&tick.decision, version);
            if let Some(phase @ (VersionPhase::Stable | VersionPhase::RolledBack | VersionPhase::Failed)) = phase {
                let decided_by = tick
                    .decision
                    .transitions
                    .iter()
                    .rfind(|transition| transition.version == version && transition.to == phase)
                    .map_or(Cause::Lifecycle, |transition| transition.cause);
                let reason = tick.decision.versions.get(version).map(|s| s.reason.clone()).unwrap_or_default();
                let outcome = start.outcome(phase, (decided_by, reason), transitions, &self.traffic(), self.started);
                self.outcomes.insert(version.to_owned(), outcome.clone());
                return Ok(outcome);
            }
            if let Source::Scrape(scrape) = &self.source
                && tick.analysis.is_none()
            {
                let _ = scrape.scrape().await;
            }
            tokio::time::sleep(self.opts.policy.interval.saturating_sub(tick_start.elapsed())).await;
        }
    }

    async fn inject(&mut self, fault: Fault) -> Result<(), DemoError> {
        let t = self.traffic_started.elapsed().as_secs_f64();
        match fault {
            Fault::KillGateway => {
                println!("[{t:>6.1}s] fault: killing reco standalone (pid {})", self.gateway.pid().unwrap_or(0));
                self.gateway.kill();
            }
            Fault::RestartGateway => {
                println!("[{t:>6.1}s] fault: restarting reco standalone");
                self.gateway.restart().await?;
            }
            Fault::KillPrometheus => {
                let prometheus = self.prometheus.as_mut().ok_or(DemoError::NoPrometheus("KillPrometheus"))?;
                println!("[{t:>6.1}s] fault: killing Prometheus (pid {})", prometheus.pid().unwrap_or(0));
                prometheus.kill();
            }
            Fault::RestartPrometheus => {
                let prometheus = self.prometheus.as_mut().ok_or(DemoError::NoPrometheus("RestartPrometheus"))?;
                println!("[{t:>6.1}s] fault: restarting Prometheus");
                prometheus.restart().await?;
            }
        }
        Ok(())
    }

    fn entry(&self, version: &str, tick: &runner::Tick) -> TimelineEntry {
        let decision = &tick.decision;
        let policy = &self.opts.policy.policy;
        let phase = runner::phase_of(decision, version).unwrap_or(VersionPhase::Pending);
        let step = match decision.state.candidate.as_ref().filter(|c| c.version == version) {
            Some(candidate) => step_label(policy, candidate.step),
            None => "done".to_owned(),
        };
        let head = TickHead {
            t: self.traffic_started.elapsed().as_secs_f64(),
            version: version.to_owned(),
            phase,
            step,
            weight: decision.canary_weight(),
            stable: decision.state.stable.clone().unwrap_or_default(),
            traffic: self.traffic().versions,
        };
        TimelineEntry::new(head, tick.analysis.as_ref(), "no look (step just started)", &decision.transitions)
    }

    /// Keeps the traffic going for `duration` more (stable serving after the last rollout).
    /// Trains `child` from the served version `parent` and the events this stack logged since
    /// `parent` was trained, as a user does (`reco train --init-from PARENT --events LOG`), while
    /// the traffic goes on; then restarts `reco standalone`, which loads the versions of its
    /// models directory at start, so that it can serve the child (on Kubernetes the operator
    /// starts the new version's pods instead). Roll it out with [`Demo::roll_out`].
    pub async fn train_child(&mut self, parent: &str, child: &str) -> Result<ChildTraining, DemoError> {
        let models = self.opts.out.join("models");
        let log = models.join(".state").join(&self.opts.pipeline).join("events.jsonl");
        // Trained beside the served versions, then copied in whole.
        let trained = self.opts.out.join("trained").join(child);
        let train_log = self.opts.out.join("logs").join(format!("train-{child}.log"));
        let output = std::fs::File::create(&train_log).map_err(io(&train_log))?;
        let errors = output.try_clone().map_err(io(&train_log))?;
        let mut command = std::process::Command::new(&self.opts.reco_bin);
        command
            .args(["train", "--quiet"])
            .arg("--data")
            .arg(&self.opts.models.data)
            .arg(format!("--pipeline={}", self.opts.pipeline))
            .arg(format!("--model-version={child}"))
            .arg(format!("--seed={}", self.opts.seed))
            .arg("--init-from")
            .arg(models.join(parent))
            .arg("--events")
            .arg(&log)
            .arg("--out")
            .arg(&trained)
            .stdout(output)
            .stderr(errors);
        if let Some(n) = self.opts.models.max_users {
            command.arg(format!("--max-users={n}"));
        }
        let t = self.traffic_started.elapsed().as_secs_f64();
        println!("[{t:>6.1}s] training {child} from {parent} and the logged events (log: {})", train_log.display());
        let started = Instant::now();
        let status = tokio::task::spawn_blocking(move || command.status())
            .await
            .map_err(|e| DemoError::Join(e.to_string()))?
            .map_err(io(&self.opts.reco_bin))?;
        if !status.success() {
            return Err(DemoError::Child { version: child.to_owned(), status: status.to_string(), log: train_log });
        }
        let training = ChildTraining::read(&trained, started.elapsed().as_secs_f64())?;
        models::copy_version(&trained, &models.join(child))?;
        let t = self.traffic_started.elapsed().as_secs_f64();
        println!(
            "[{t:>6.1}s] {child}: {} logged events used, test NDCG@10 {:.4} against {parent}'s {:.4}; restarting reco standalone to serve it",
            training.events_used, training.ndcg_at_10, training.parent_ndcg_at_10
        );
        self.gateway.restart().await?;
        Ok(training)
    }

    pub async fn settle(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }

    /// Stops the traffic, reads the counters back from Prometheus (when it
    /// runs), writes `report.json` and `ctr.png`, and stops the processes.
    pub async fn finish(mut self) -> Result<DemoReport, DemoError> {
        let stats = match self.sim.take() {
            Some(sim) => sim.stop().await,
            None => SimStats::default(),
        };
        let mut prometheus_counters = BTreeMap::new();
        if let Some(prometheus) = &self.prometheus {
            // Two scrape intervals: the last requests are in the TSDB.
            tokio::time::sleep(Duration::from_millis(2500)).await;
            prometheus_counters = crate::stack::prometheus_counters(&prometheus.base(), &self.opts.pipeline).await;
        }
        let report = DemoReport {
            seed: self.opts.seed,
            metrics_source: if self.prometheus.is_some() { "prometheus" } else { "scrape" }.to_owned(),
            policy: self.opts.policy_text.clone(),
            rate: self.opts.rate,
            wall_seconds: self.started.elapsed().as_secs_f64(),
            versions: self.outcomes.clone(),
            traffic: stats.versions.iter().map(|(v, c)| (v.clone(), Traffic::from(*c))).collect(),
            requests: RequestTotals::of(&stats),
            prometheus: prometheus_counters,
            timeline: std::mem::take(&mut self.timeline),
        };
        write_report(&self.opts.out, &report)?;
        Ok(report)
    }
}

/// Loads the replayed users and starts sending their requests to the gateway at `base`.
pub(crate) async fn start_replay(opts: &DemoOptions, base: reqwest::Url, retries: u32) -> Result<Simulator, DemoError> {
    let (data, max_users) = (opts.models.data.clone(), opts.models.max_users);
    let replay = tokio::task::spawn_blocking(move || ReplayData::load(&data, max_users, crate::replay::Future::Test))
        .await
        .map_err(|e| DemoError::Join(e.to_string()))??;
    println!("replaying {} users at {} requests/s", replay.users.len(), opts.rate);
    let config = SimConfig {
        base,
        rate: opts.rate,
        concurrency: opts.concurrency,
        seed: opts.seed,
        noise: opts.noise,
        page_size: opts.page_size,
        context: serde_json::json!({"attributes": {"surface": "demo"}}),
        retries,
    };
    Ok(Simulator::start(config, Arc::new(replay))?)
}

impl DemoOptions {
    /// `reco demo`'s defaults (seed 42, so the model cache is shared with
    /// `make demo`), writing to `out`, for tests.
    pub fn defaults(out: PathBuf, reco_bin: PathBuf, data: PathBuf, cache_root: PathBuf) -> DemoOptions {
        DemoOptions {
            out,
            reco_bin,
            models: ModelOptions {
                data,
                seed: 42,
                pipeline: "demo".into(),
                max_users: None,
                v1_embedding_dim: 8,
                v1_epochs: 1,
                v1_candidates: 10,
                v1_ranker_epochs: 1,
                v2_epochs: 30,
                threads: None,
            },
            cache_root,
            prometheus: None,
            pipeline: "demo".into(),
            policy: crate::policy::demo_policy().expect("the built-in demo policy is valid"),
            policy_text: crate::policy::DEMO_PIPELINE_SPEC.into(),
            seed: 42,
            rate: 50.0,
            concurrency: 64,
            noise: 0.001,
            page_size: 10,
            max_wall: Duration::from_secs(25 * 60),
            ready_timeout: Duration::from_secs(180),
            deadline_ms: 1000,
            resume: false,
            print_timeline: true,
        }
    }
}

/// Writes `report.json` (atomically) and `ctr.png` beside it.
pub fn write_report(out: &Path, report: &DemoReport) -> Result<(), DemoError> {
    let json = serde_json::to_vec_pretty(report).map_err(|e| DemoError::Serialize(e.to_string()))?;
    runner::write_atomic(&out.join("report.json"), &json)?;
    let chart = out.join("ctr.png");
    if let Err(e) = crate::chart::draw(&report.timeline, &chart) {
        // The chart is an illustration: the report stands without it.
        tracing::warn!(error = %e, "no ctr.png");
        eprintln!("warning: {e}");
    }
    Ok(())
}

/// The whole scenario: v2 rolled out, then v3, then stable serving alone for a moment.
pub async fn run_demo(
    opts: DemoOptions,
    hook: &mut dyn FnMut(&TimelineEntry) -> Vec<Fault>,
) -> Result<DemoReport, DemoError> {
    let mut demo = Demo::start(opts, None).await?;
    demo.settle(WARMUP).await;
    for version in [BETTER, BROKEN] {
        let outcome = demo.roll_out(version, hook).await?;
        println!("==> {version}: {} after {:.0} s: {}", outcome.outcome, outcome.wall_seconds, outcome.reason);
    }
    demo.settle(demo.opts.policy.interval).await;
    demo.finish().await
}

/// One A/A rollout: v1 against a copy of itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AaRun {
    pub run: usize,
    pub outcome: String,
    /// `Analysis` (the CTR test or a guardrail decided) or `Timeout`.
    pub decided_by: Cause,
    pub reason: String,
    pub wall_seconds: f64,
    pub impressions_to_decision: u64,
    /// This run's requests (each run has its own stack).
    pub requests: RequestTotals,
}

/// `DIR/aa-report.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AaReport {
    pub runs: Vec<AaRun>,
    pub promoted: usize,
    /// False rollbacks decided by the analysis.
    pub rolled_back_by_analysis: usize,
    /// Rollbacks because a step's maxDuration ran out undecided.
    pub rolled_back_by_timeout: usize,
    /// All runs' requests together.
    pub requests: RequestTotals,
    pub policy: String,
    pub wall_seconds: f64,
}

/// `runs` A/A rollouts of a copy of v1 against v1; writes `aa-report.json`
/// after each. Every run starts a fresh stack (feature store from the seeded
/// histories, new runner state, its own user salt and simulator seed): the
/// replayed users click only their held-out items, which the clicks of an
/// earlier run on a shared stack would have used up.
pub async fn run_aa(opts: DemoOptions, runs: usize) -> Result<AaReport, DemoError> {
    let started = Instant::now();
    let out = opts.out.clone();
    let mut report = AaReport { policy: opts.policy_text.clone(), ..Default::default() };
    for run in 1..=runs {
        let run_opts = DemoOptions { seed: opts.seed.wrapping_add(run as u64), resume: false, ..opts.clone() };
        let mut demo = Demo::start(run_opts, Some(run)).await?;
        demo.settle(WARMUP).await;
        let outcome = demo.roll_out(AA_COPY, &mut |_| Vec::new()).await?;
        let run_report = demo.finish().await?;
        let decided_by = outcome.decided_by;
        match (outcome.outcome.as_str(), decided_by) {
            ("promoted", _) => report.promoted += 1,
            (_, Cause::Timeout) => report.rolled_back_by_timeout += 1,
            _ => report.rolled_back_by_analysis += 1,
        }
        println!("==> A/A run {run}/{runs}: {} ({decided_by:?}) after {:.0} s", outcome.outcome, outcome.wall_seconds);
        report.requests.add(&run_report.requests);
        report.runs.push(AaRun {
            run,
            outcome: outcome.outcome,
            decided_by,
            reason: outcome.reason,
            wall_seconds: outcome.wall_seconds,
            impressions_to_decision: outcome.impressions_to_decision,
            requests: run_report.requests,
        });
        report.wall_seconds = started.elapsed().as_secs_f64();
        let json = serde_json::to_vec_pretty(&report).map_err(|e| DemoError::Serialize(e.to_string()))?;
        runner::write_atomic(&out.join("aa-report.json"), &json)?;
    }
    Ok(report)
}
