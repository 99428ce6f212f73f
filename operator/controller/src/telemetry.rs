//! The operator's own Prometheus metrics, served on `/metrics`. Names are
//! the ones the Helm chart's alerts and dashboard use.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use reco_api::PipelinePhase;
use reco_rollout::AnalysisVerdict;
use reco_runtime::buckets::latency_histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    controller: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    controller: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PipelineLabels {
    namespace: String,
    pipeline: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    namespace: String,
    pipeline: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    namespace: String,
    pipeline: String,
    verdict: String,
}

/// Every metric the operator exports.
pub struct OperatorMetrics {
    reconciles: Family<ResultLabels, Counter>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_duration: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    rollout_phase: Family<PhaseLabels, Gauge>,
    canary_weight: Family<PipelineLabels, Gauge>,
    analysis_decisions: Family<VerdictLabels, Counter>,
    rollbacks: Family<PipelineLabels, Counter>,
    promotions: Family<PipelineLabels, Counter>,
}

/// Phases of a pipeline, each a 0/1 series of `reco_operator_rollout_phase`.
pub const PIPELINE_PHASES: [PipelinePhase; 4] =
    [PipelinePhase::Idle, PipelinePhase::Shadow, PipelinePhase::Canary, PipelinePhase::Paused];

impl OperatorMetrics {
    /// Creates the metrics and registers them under the `reco_operator` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(latency_histogram),
            rollout_phase: Family::default(),
            canary_weight: Family::default(),
            analysis_decisions: Family::default(),
            rollbacks: Family::default(),
            promotions: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("reco_operator");
        r.register("reconciles", "Reconciles by controller and result", metrics.reconciles.clone());
        r.register(
            "reconcile_errors",
            "Failed reconciles by controller and error kind",
            metrics.reconcile_errors.clone(),
        );
        r.register("reconcile_duration_seconds", "Time of one reconcile", metrics.reconcile_duration.clone());
        r.register("rollout_phase", "1 for the pipeline's current rollout phase", metrics.rollout_phase.clone());
        r.register("canary_weight", "Percentage of users served by the canary", metrics.canary_weight.clone());
        r.register("analysis_decisions", "Verdicts of the live analysis", metrics.analysis_decisions.clone());
        r.register("rollbacks", "Model versions rolled back", metrics.rollbacks.clone());
        r.register("promotions", "Model versions promoted to stable", metrics.promotions.clone());
        metrics
    }

    pub fn reconciled(&self, controller: &str, duration: Duration, error: Option<&str>) {
        let result = if error.is_some() { "error" } else { "ok" };
        self.reconciles.get_or_create(&ResultLabels { controller: controller.into(), result: result.into() }).inc();
        if let Some(reason) = error {
            self.reconcile_errors
                .get_or_create(&ErrorLabels { controller: controller.into(), reason: reason.into() })
                .inc();
        }
        self.reconcile_duration
            .get_or_create(&ControllerLabels { controller: controller.into() })
            .observe(duration.as_secs_f64());
    }

    pub fn pipeline_state(&self, namespace: &str, pipeline: &str, phase: Option<PipelinePhase>, canary_weight: u8) {
        for candidate in PIPELINE_PHASES {
            let labels =
                PhaseLabels { namespace: namespace.into(), pipeline: pipeline.into(), phase: format!("{candidate:?}") };
            self.rollout_phase.get_or_create(&labels).set(i64::from(Some(candidate) == phase));
        }
        let labels = PipelineLabels { namespace: namespace.into(), pipeline: pipeline.into() };
        self.canary_weight.get_or_create(&labels).set(canary_weight.into());
    }

    pub fn analysed(&self, namespace: &str, pipeline: &str, verdict: AnalysisVerdict) {
        let verdict = format!("{verdict:?}");
        self.analysis_decisions
            .get_or_create(&VerdictLabels { namespace: namespace.into(), pipeline: pipeline.into(), verdict })
            .inc();
    }

    pub fn rolled_back(&self, namespace: &str, pipeline: &str) {
        self.rollbacks.get_or_create(&PipelineLabels { namespace: namespace.into(), pipeline: pipeline.into() }).inc();
    }

    pub fn promoted(&self, namespace: &str, pipeline: &str) {
        self.promotions.get_or_create(&PipelineLabels { namespace: namespace.into(), pipeline: pipeline.into() }).inc();
    }
}
