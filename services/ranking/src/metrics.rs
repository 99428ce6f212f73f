//! Prometheus metrics of the ranking service, registered under the `reco_ranking_` prefix. Every
//! series carries the `model_version` it was measured on (`reco standalone` serves several versions
//! from one registry).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use reco_runtime::buckets::latency_histogram;

use crate::scorer::Ranked;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub model_version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkipLabel {
    pub model_version: String,
    /// `unknown_item`, `duplicate`, `invalid_score` or `non_finite_output`.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub model_version: String,
    /// `ok`, or the gRPC code of the failure (`invalid_argument`, `internal`).
    pub outcome: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn rows_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

/// Handles to every metric, labelled for one model version ([`Metrics::for_version`]); cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    model_version: String,
    /// Seconds per Rank call, by outcome.
    rank_duration: HistogramFamily<OutcomeLabel>,
    /// Rows of each forward pass of the ranker.
    rows_per_forward: HistogramFamily<VersionLabel>,
    /// Candidates left out of responses, by reason.
    skipped_candidates: Family<SkipLabel, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_prefix("reco_ranking");
        let m = Metrics {
            model_version: String::new(),
            rank_duration: Family::new_with_constructor(latency_histogram),
            rows_per_forward: Family::new_with_constructor(rows_histogram),
            skipped_candidates: Family::default(),
        };
        registry.register("rank_duration_seconds", "Latency of Rank calls, by outcome", m.rank_duration.clone());
        registry.register("rows_per_forward", "Candidate rows per ranker forward pass", m.rows_per_forward.clone());
        registry.register(
            "skipped_candidates",
            "Candidates left out of responses (unknown item, duplicate, invalid input, non-finite output)",
            m.skipped_candidates.clone(),
        );
        m
    }

    /// The same series, labelled with `model_version`.
    pub fn for_version(&self, model_version: &str) -> Self {
        Self { model_version: model_version.to_owned(), ..self.clone() }
    }

    pub(crate) fn observe_rank(&self, outcome: String, seconds: f64) {
        let labels = OutcomeLabel { model_version: self.model_version.clone(), outcome };
        self.rank_duration.get_or_create(&labels).observe(seconds);
    }

    pub(crate) fn observe(&self, ranked: &Ranked) {
        let version = VersionLabel { model_version: self.model_version.clone() };
        for &rows in &ranked.forwards {
            self.rows_per_forward.get_or_create(&version).observe(rows as f64);
        }
        for skip in &ranked.skipped {
            let labels = SkipLabel { model_version: self.model_version.clone(), reason: skip.as_str().to_owned() };
            self.skipped_candidates.get_or_create(&labels).inc();
        }
    }
}
