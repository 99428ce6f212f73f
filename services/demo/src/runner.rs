//! The local runner: the operator's reconcile loop without Kubernetes.
//!
//! Each [`LocalRunner::tick`] does what one operator reconcile does for one
//! pipeline: read the current step's window from a [`MetricSource`], judge it
//! with [`CandidateState::analyse`], call [`decide`] and apply the decision.
//! Applying means writing `routing.yaml` (which `reco standalone`
//! hot-reloads) and the runner's state file, both atomically (temporary
//! file, then rename), so a restarted runner resumes exactly where it was and
//! the gateway never reads half a table.
//!
//! A window that cannot be read (the gateway or Prometheus is down) is judged
//! Inconclusive via [`metrics_unavailable`]: the engine holds the weight and
//! never promotes on it.

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use reco_contracts::RoutingTable;
use reco_metric_source::{MetricSource, WindowQuery};
use reco_rollout::{
    AnalysisReport, CandidateState, Decision, Observation, RolloutState, VersionInfo, VersionPhase, decide,
    metrics_unavailable,
};
use serde::{Deserialize, Serialize};

use crate::policy::DemoPolicy;

pub use reco_contracts::routing::ROUTING_FILE;

/// Why the runner could not load or save its files.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("state file {path} is not a runner state: {reason}")]
    CorruptState { path: PathBuf, reason: String },
    #[error("state file {path} belongs to pipeline {found:?}, not {expected:?}")]
    OtherPipeline { path: PathBuf, found: String, expected: String },
    #[error("cannot serialize {what}: {reason}")]
    Serialize { what: &'static str, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunnerError + '_ {
    move |source| RunnerError::Io { path: path.to_owned(), source }
}

/// A model version the runner knows, as stored in its state file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KnownVersion {
    pub name: String,
    pub created: Timestamp,
}

/// Everything the runner persists between ticks and restarts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerFile {
    pub pipeline: String,
    pub salt: String,
    /// The engine's state (what the operator keeps in the pipeline status).
    pub rollout: RolloutState,
    /// The versions handed to the engine, in the order they were added.
    pub versions: Vec<KnownVersion>,
    /// The routing table last written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<RoutingTable>,
}

/// Where the runner keeps its files, and for which pipeline.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    pub pipeline: String,
    /// Salt of the user hash in the routing table.
    pub salt: String,
    /// The runner's state file (JSON).
    pub state_path: PathBuf,
    /// The directory `reco standalone --models` serves; `routing.yaml` goes here.
    pub models_dir: PathBuf,
    pub policy: DemoPolicy,
}

/// The outcome of one tick.
#[derive(Clone, Debug)]
pub struct Tick {
    /// The look at the metrics, when a candidate was in flight.
    pub analysis: Option<AnalysisReport>,
    pub decision: Decision,
    /// Whether `routing.yaml` was rewritten.
    pub routing_changed: bool,
}

/// Drives one pipeline's rollouts with the operator's engine.
#[derive(Debug)]
pub struct LocalRunner {
    config: RunnerConfig,
    file: RunnerFile,
}

impl LocalRunner {
    /// Opens the runner, resuming from the state file when it exists.
    pub fn open(config: RunnerConfig) -> Result<Self, RunnerError> {
        let path = &config.state_path;
        let file = match std::fs::read(path) {
            Ok(bytes) => {
                let file: RunnerFile = serde_json::from_slice(&bytes)
                    .map_err(|e| RunnerError::CorruptState { path: path.clone(), reason: e.to_string() })?;
                if file.pipeline != config.pipeline {
                    return Err(RunnerError::OtherPipeline {
                        path: path.clone(),
                        found: file.pipeline,
                        expected: config.pipeline.clone(),
                    });
                }
                file
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RunnerFile {
                pipeline: config.pipeline.clone(),
                salt: config.salt.clone(),
                rollout: RolloutState::default(),
                versions: Vec::new(),
                routing: None,
            },
            Err(e) => return Err(io(path)(e)),
        };
        Ok(LocalRunner { config, file })
    }

    /// What the runner has persisted.
    pub fn file(&self) -> &RunnerFile {
        &self.file
    }

    pub fn policy(&self) -> &DemoPolicy {
        &self.config.policy
    }

    /// Hands a new model version to the engine (the local `kubectl apply` of
    /// a ModelVersion); known names are ignored. Saved at once.
    pub fn add_version(&mut self, name: &str, created: Timestamp) -> Result<(), RunnerError> {
        if !self.file.versions.iter().any(|v| v.name == name) {
            self.file.versions.push(KnownVersion { name: name.to_owned(), created });
            self.save()?;
        }
        Ok(())
    }

    /// The window query of the current step, when a candidate is in flight.
    pub fn window_query(&self, now: Timestamp) -> Option<WindowQuery> {
        window_query(&self.config.policy, &self.file, now)
    }

    /// One reconcile: look at the metrics (unless `unavailable` says why they
    /// cannot be trusted now), decide, write routing and state.
    pub async fn tick(
        &mut self,
        source: &dyn MetricSource,
        unavailable: Option<String>,
        now: Timestamp,
    ) -> Result<Tick, RunnerError> {
        let analysis = match (self.window_query(now), unavailable) {
            (None, _) => None,
            (Some(_), Some(reason)) => Some(metrics_unavailable(&reason)),
            (Some(query), None) => Some(match source.window(&query).await {
                Ok(window) => self.candidate().map_or_else(
                    || metrics_unavailable("no candidate"),
                    |candidate| candidate.analyse(&self.config.policy.policy, &window),
                ),
                Err(e) => metrics_unavailable(&e.to_string()),
            }),
        };
        self.apply(analysis, now)
    }

    /// Decides with an analysis already made and applies the decision.
    pub fn apply(&mut self, analysis: Option<AnalysisReport>, now: Timestamp) -> Result<Tick, RunnerError> {
        let decision = step(&self.config.policy, &self.file, analysis.as_ref(), now);
        self.file.rollout = decision.state.clone();
        let routing_changed =
            decision.routing.validate().is_ok() && self.file.routing.as_ref() != Some(&decision.routing);
        if routing_changed {
            write_routing(&self.config.models_dir, &decision.routing)?;
            self.file.routing = Some(decision.routing.clone());
        }
        self.save()?;
        Ok(Tick { analysis, decision, routing_changed })
    }

    fn candidate(&self) -> Option<&CandidateState> {
        self.file.rollout.candidate.as_ref()
    }

    fn save(&self) -> Result<(), RunnerError> {
        let bytes = serde_json::to_vec_pretty(&self.file)
            .map_err(|e| RunnerError::Serialize { what: "runner state", reason: e.to_string() })?;
        write_atomic(&self.config.state_path, &bytes)
    }
}

/// The engine's view of the known versions: none broken, all ready (the
/// standalone serves every version it loaded), no commands.
fn version_infos(file: &RunnerFile) -> Vec<VersionInfo> {
    file.versions
        .iter()
        .map(|v| VersionInfo {
            name: v.name.clone(),
            created: v.created,
            offline_metrics: Default::default(),
            broken: None,
            ready: true,
            command: None,
        })
        .collect()
}

/// One call of the engine on the stored state. Pure.
pub fn step(policy: &DemoPolicy, file: &RunnerFile, analysis: Option<&AnalysisReport>, now: Timestamp) -> Decision {
    let versions = version_infos(file);
    decide(
        &policy.policy,
        &file.rollout,
        &Observation { pipeline: &file.pipeline, salt: &file.salt, versions: &versions, analysis, paused: false, now },
    )
}

/// The query for the candidate's current step, as the operator builds it. Pure.
pub fn window_query(policy: &DemoPolicy, file: &RunnerFile, now: Timestamp) -> Option<WindowQuery> {
    WindowQuery::for_candidate(&file.pipeline, crate::stack::DEMO_NAMESPACE, &policy.policy, &file.rollout, now)
}

/// The phase of `version` after a decision, if the engine knows it.
pub fn phase_of(decision: &Decision, version: &str) -> Option<VersionPhase> {
    decision.versions.get(version).map(|status| status.phase)
}

/// Writes `DIR/routing.yaml` atomically.
pub fn write_routing(models_dir: &Path, table: &RoutingTable) -> Result<(), RunnerError> {
    let yaml = serde_saphyr::to_string(table)
        .map_err(|e| RunnerError::Serialize { what: "routing table", reason: e.to_string() })?;
    write_atomic(&models_dir.join(ROUTING_FILE), yaml.as_bytes())
}

/// Saves `bytes` as `path`: readers see the old file or the new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RunnerError> {
    reco_runtime::fs::save_atomic(path, bytes).map_err(io(path))
}

#[cfg(test)]
mod tests;
