//! Prometheus metrics of the ranking service, registered under the `reco_ranking_` prefix.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::scorer::Ranked;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkipLabel {
    /// `unknown_item`, `duplicate`, `invalid_score` or `non_finite_output`.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `ok`, or the gRPC code of the failure (`invalid_argument`, `internal`).
    pub outcome: String,
}

/// Handles to every metric; cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Seconds per Rank call, by outcome.
    pub rank_seconds: Family<OutcomeLabel, Histogram, fn() -> Histogram>,
    /// Rows of each forward pass of the ranker.
    pub rows_per_forward: Histogram,
    /// Candidates left out of responses, by reason.
    pub skipped_candidates: Family<SkipLabel, Counter>,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~3.3 s
    Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_prefix("reco_ranking");
        let m = Metrics {
            rank_seconds: Family::new_with_constructor(latency_histogram),
            rows_per_forward: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            skipped_candidates: Family::default(),
        };
        registry.register("rank_seconds", "Latency of Rank calls, by outcome", m.rank_seconds.clone());
        registry.register("rows_per_forward", "Candidate rows per ranker forward pass", m.rows_per_forward.clone());
        registry.register(
            "skipped_candidates",
            "Candidates left out of responses (unknown item, duplicate, invalid input, non-finite output)",
            m.skipped_candidates.clone(),
        );
        m
    }

    pub(crate) fn observe(&self, ranked: &Ranked) {
        for &rows in &ranked.forwards {
            self.rows_per_forward.observe(rows as f64);
        }
        for skip in &ranked.skipped {
            self.skipped_candidates.get_or_create(&SkipLabel { reason: skip.as_str().to_owned() }).inc();
        }
    }
}
