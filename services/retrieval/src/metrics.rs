//! Prometheus metrics of the retrieval service, registered under the `reco_retrieval_` prefix.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    /// `user_tower` (per request: cache, queue and forward), `user_tower_batch` (one forward pass), `ann`,
    /// `item_to_item`, `total`.
    pub stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabel {
    /// `hit` or `miss`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 20 µs .. ~0.6 s
    Histogram::new(exponential_buckets(0.000_02, 2.0, 16))
}

fn count_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 14))
}

/// Handles to every metric; cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub stage_seconds: HistogramFamily<StageLabel>,
    pub batch_size: Histogram,
    pub embedding_cache: Family<CacheLabel, Counter>,
    /// Candidates returned per request, by the source credited with each.
    pub candidates: HistogramFamily<SourceLabel>,
    pub items_added: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_prefix("reco_retrieval");
        let m = Self::unregistered();
        registry.register("stage_seconds", "Retrieval latency by stage", m.stage_seconds.clone());
        registry.register("batch_size", "Users encoded per user-tower forward pass", m.batch_size.clone());
        registry.register("embedding_cache", "User-embedding cache lookups by result", m.embedding_cache.clone());
        registry.register("candidates", "Candidates returned per request, by source", m.candidates.clone());
        registry.register("items_added", "New items encoded from content and indexed", m.items_added.clone());
        m
    }

    /// Metrics that no registry exports (tests, benchmarks).
    pub fn unregistered() -> Self {
        Self {
            stage_seconds: Family::new_with_constructor(latency_histogram),
            batch_size: count_histogram(),
            embedding_cache: Family::default(),
            candidates: Family::new_with_constructor(count_histogram),
            items_added: Counter::default(),
        }
    }

    pub(crate) fn observe_stage(&self, stage: &'static str, started: std::time::Instant) {
        self.stage_seconds.get_or_create(&StageLabel { stage }).observe(started.elapsed().as_secs_f64());
    }

    pub(crate) fn cache(&self, hit: bool) {
        self.embedding_cache.get_or_create(&CacheLabel { result: if hit { "hit" } else { "miss" } }).inc();
    }
}
