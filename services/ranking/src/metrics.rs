//! Prometheus metrics of the ranking service, registered under the `reco_ranking_` prefix. Every
//! series carries the `model_version` it was measured on (`reco standalone` serves several versions
//! from one registry).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use reco_model::drift::{DENSE_FEATURE_NAMES, RequestCheck};
use reco_model::scoring::N_DENSE;
use reco_runtime::buckets::latency_histogram;
use std::sync::atomic::AtomicU64;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FeatureLabel {
    pub model_version: String,
    /// One of `reco_model::drift::DENSE_FEATURE_NAMES`.
    pub feature: &'static str,
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
    /// PSI of each dense feature over the last closed drift window.
    feature_psi: Family<FeatureLabel, Gauge<f64, AtomicU64>>,
    /// Sampled rows counted into the drift windows.
    feature_rows: Family<VersionLabel, Counter>,
    /// Sampled values outside the reference's range, by feature.
    feature_out_of_range: Family<FeatureLabel, Counter>,
    /// Sampled non-finite values, by feature.
    feature_missing: Family<FeatureLabel, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_prefix("reco_ranking");
        let m = Metrics {
            model_version: String::new(),
            rank_duration: Family::new_with_constructor(latency_histogram),
            rows_per_forward: Family::new_with_constructor(rows_histogram),
            skipped_candidates: Family::default(),
            feature_psi: Family::default(),
            feature_rows: Family::default(),
            feature_out_of_range: Family::default(),
            feature_missing: Family::default(),
        };
        registry.register("rank_duration_seconds", "Latency of Rank calls, by outcome", m.rank_duration.clone());
        registry.register("rows_per_forward", "Candidate rows per ranker forward pass", m.rows_per_forward.clone());
        registry.register(
            "skipped_candidates",
            "Candidates left out of responses (unknown item, duplicate, invalid input, non-finite output)",
            m.skipped_candidates.clone(),
        );
        registry.register(
            "feature_psi",
            "Population stability index of a dense ranker feature over the last drift window, against the version's validation users",
            m.feature_psi.clone(),
        );
        registry.register("feature_rows", "Sampled rows counted by the drift monitors", m.feature_rows.clone());
        registry.register(
            "feature_out_of_range",
            "Sampled feature values outside the range seen on the version's validation users",
            m.feature_out_of_range.clone(),
        );
        registry.register("feature_missing", "Sampled non-finite feature values", m.feature_missing.clone());
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

    fn feature(&self, feature: &'static str) -> FeatureLabel {
        FeatureLabel { model_version: self.model_version.clone(), feature }
    }

    /// One sampled request's rows: how many, and the values the reference did not expect.
    pub(crate) fn observe_drift_rows(&self, rows: usize, check: &RequestCheck) {
        let version = VersionLabel { model_version: self.model_version.clone() };
        self.feature_rows.get_or_create(&version).inc_by(rows as u64);
        for (j, name) in DENSE_FEATURE_NAMES.into_iter().enumerate() {
            // Created at 0 too, so that a rate over them exists before the first bad value.
            self.feature_out_of_range.get_or_create(&self.feature(name)).inc_by(check.out_of_range[j]);
            self.feature_missing.get_or_create(&self.feature(name)).inc_by(check.missing[j]);
        }
    }

    /// A closed window's PSI per feature (a feature without finite values keeps its last).
    pub(crate) fn observe_drift_window(&self, psi: &[Option<f64>; N_DENSE]) {
        for (name, psi) in DENSE_FEATURE_NAMES.into_iter().zip(psi) {
            if let Some(psi) = psi {
                self.feature_psi.get_or_create(&self.feature(name)).set(*psi);
            }
        }
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
