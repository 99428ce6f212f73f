//! Prometheus metrics of the retrieval service, registered under the `reco_retrieval_` prefix. Every
//! series carries the `model_version` it was measured on (`reco standalone` serves several versions
//! from one registry).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use reco_runtime::buckets::latency_histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub model_version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub model_version: String,
    /// `user_tower` (per request: cache, queue and forward), `user_tower_batch` (one forward pass), `ann`,
    /// `item_to_item`, `total`.
    pub stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabel {
    pub model_version: String,
    /// `hit` or `miss`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub model_version: String,
    pub source: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn count_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 14))
}

/// Handles to every metric, labelled for one model version ([`Metrics::for_version`]); cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    model_version: String,
    stage_duration: HistogramFamily<StageLabel>,
    batch_size: HistogramFamily<VersionLabel>,
    embedding_cache: Family<CacheLabel, Counter>,
    /// Candidates returned per request, by the source credited with each.
    candidates: HistogramFamily<SourceLabel>,
    items_added: Family<VersionLabel, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_prefix("reco_retrieval");
        let m = Self::unregistered();
        registry.register("stage_duration_seconds", "Retrieval latency by stage", m.stage_duration.clone());
        registry.register("batch_size", "Users encoded per user-tower forward pass", m.batch_size.clone());
        registry.register("embedding_cache", "User-embedding cache lookups by result", m.embedding_cache.clone());
        registry.register("candidates", "Candidates returned per request, by source", m.candidates.clone());
        registry.register("items_added", "New items encoded from content and indexed", m.items_added.clone());
        m
    }

    /// Metrics that no registry exports (tests, benchmarks).
    pub fn unregistered() -> Self {
        Self {
            model_version: String::new(),
            stage_duration: Family::new_with_constructor(latency_histogram),
            batch_size: Family::new_with_constructor(count_histogram),
            embedding_cache: Family::default(),
            candidates: Family::new_with_constructor(count_histogram),
            items_added: Family::default(),
        }
    }

    /// The same series, labelled with `model_version`.
    pub fn for_version(&self, model_version: &str) -> Self {
        Self { model_version: model_version.to_owned(), ..self.clone() }
    }

    fn version(&self) -> VersionLabel {
        VersionLabel { model_version: self.model_version.clone() }
    }

    pub(crate) fn observe_stage(&self, stage: &'static str, started: std::time::Instant) {
        let labels = StageLabel { model_version: self.model_version.clone(), stage };
        self.stage_duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    }

    pub(crate) fn cache(&self, hit: bool) {
        let labels = CacheLabel { model_version: self.model_version.clone(), result: if hit { "hit" } else { "miss" } };
        self.embedding_cache.get_or_create(&labels).inc();
    }

    pub(crate) fn batch(&self, users: usize) {
        self.batch_size.get_or_create(&self.version()).observe(users as f64);
    }

    pub(crate) fn candidates(&self, source: &'static str, count: usize) {
        let labels = SourceLabel { model_version: self.model_version.clone(), source };
        self.candidates.get_or_create(&labels).observe(count as f64);
    }

    pub(crate) fn items_added(&self, count: usize) {
        self.items_added.get_or_create(&self.version()).inc_by(count as u64);
    }
}
