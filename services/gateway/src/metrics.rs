//! The gateway's Prometheus metrics. The names and the `pipeline` / `model_version` labels of
//! the series the operator's analysis reads come from [`reco_contracts::metrics`], so the two
//! sides cannot drift apart.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use reco_contracts::metrics as signals;
use reco_contracts::routing::USER_GROUPS;
use reco_runtime::buckets::latency_histogram;

/// Labels of the per-version series (field names are the label names).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub pipeline: String,
    pub model_version: String,
}

/// Labels of impressions and clicks: the version's, and the user group
/// ([`signals::USER_GROUP_LABEL`]) that the analysis measures CTR variance across.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub pipeline: String,
    pub model_version: String,
    pub user_group: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub pipeline: String,
    pub model_version: String,
    pub stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub pipeline: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipelineLabels {
    pub pipeline: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub cache: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub pipeline: String,
    pub model_version: String,
    pub event_type: &'static str,
}

/// Labels of the items a version served, by the candidate source that found them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub pipeline: String,
    pub model_version: String,
    /// One of [`reco_proto::CANDIDATE_SOURCES`], or `other`.
    pub source: &'static str,
}

impl SourceLabels {
    pub fn new(version: &VersionLabels, source: &str) -> Self {
        let source = reco_proto::CANDIDATE_SOURCES.into_iter().find(|known| *known == source).unwrap_or("other");
        Self { pipeline: version.pipeline.clone(), model_version: version.model_version.clone(), source }
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn overlap_histogram() -> Histogram {
    Histogram::new([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
}

/// Cosine distance: mostly within [0, 1], up to 2 for opposed embeddings.
fn distance_histogram() -> Histogram {
    Histogram::new([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0])
}

/// Bits: 0 is a single-category page, log2(20) ≈ 4.3 a page of 20 distinct categories.
fn entropy_histogram() -> Histogram {
    Histogram::new([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0])
}

/// Seconds a user spent on an item.
fn dwell_histogram() -> Histogram {
    Histogram::new([1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0])
}

/// Every series the gateway exports. Cheap to clone (families are shared handles).
#[derive(Clone)]
pub struct Metrics {
    pub impressions: Family<GroupLabels, Counter>,
    pub clicks: Family<GroupLabels, Counter>,
    pub requests: Family<VersionLabels, Counter>,
    pub errors: Family<VersionLabels, Counter>,
    pub latency: HistogramFamily<VersionLabels>,
    pub stage_latency: HistogramFamily<StageLabels>,
    pub fallbacks: Family<ReasonLabels, Counter>,
    pub token_rejects: Family<ReasonLabels, Counter>,
    pub events: Family<EventLabels, Counter>,
    pub duplicate_events: Family<EventLabels, Counter>,
    pub dedup_evictions: Family<PipelineLabels, Counter>,
    pub shadow_requests: Family<VersionLabels, Counter>,
    pub shadow_errors: Family<VersionLabels, Counter>,
    pub shadow_dropped: Family<VersionLabels, Counter>,
    pub shadow_latency: HistogramFamily<VersionLabels>,
    pub shadow_overlap: HistogramFamily<VersionLabels>,
    pub routing_reload_errors: Family<PipelineLabels, Counter>,
    pub cache_requests: Family<CacheLabels, Counter>,
    pub page_items: Family<SourceLabels, Counter>,
    pub page_intra_list_diversity: HistogramFamily<VersionLabels>,
    pub page_category_entropy: HistogramFamily<VersionLabels>,
    pub dwell: HistogramFamily<VersionLabels>,
}

/// prometheus-client appends `_total` to counters itself.
fn counter_name(full: &str) -> &str {
    full.strip_suffix("_total").unwrap_or(full)
}

impl Metrics {
    /// Creates a version's impression and click series of every user group at
    /// zero. Prometheus' `increase()` cannot see what a series counted before
    /// its first sample, so a series born at its first click would lose that
    /// click: a canary's groups, all born during its rollout, would lose the
    /// first click of each.
    pub fn start_groups_at_zero(&self, pipeline: &str, version: &str) {
        for group in 0..USER_GROUPS {
            let labels = GroupLabels {
                pipeline: pipeline.to_owned(),
                model_version: version.to_owned(),
                user_group: u16::try_from(group).unwrap_or(u16::MAX),
            };
            self.impressions.get_or_create(&labels).inc_by(0);
            self.clicks.get_or_create(&labels).inc_by(0);
        }
    }

    /// Registers every series in `registry` (one registry per process, shared in standalone).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            impressions: Family::default(),
            clicks: Family::default(),
            requests: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            stage_latency: Family::new_with_constructor(latency_histogram),
            fallbacks: Family::default(),
            token_rejects: Family::default(),
            events: Family::default(),
            duplicate_events: Family::default(),
            dedup_evictions: Family::default(),
            shadow_requests: Family::default(),
            shadow_errors: Family::default(),
            shadow_dropped: Family::default(),
            shadow_latency: Family::new_with_constructor(latency_histogram),
            shadow_overlap: Family::new_with_constructor(overlap_histogram),
            routing_reload_errors: Family::default(),
            cache_requests: Family::default(),
            page_items: Family::default(),
            page_intra_list_diversity: Family::new_with_constructor(distance_histogram),
            page_category_entropy: Family::new_with_constructor(entropy_histogram),
            dwell: Family::new_with_constructor(dwell_histogram),
        };
        let m = &metrics;
        registry.register(
            counter_name(signals::IMPRESSIONS),
            "Items shown to users, once per page",
            m.impressions.clone(),
        );
        registry.register(
            counter_name(signals::CLICKS),
            "Clicks on an item of the token's page, once per request and item",
            m.clicks.clone(),
        );
        registry.register(counter_name(signals::REQUESTS), "Recommend requests answered", m.requests.clone());
        registry.register(counter_name(signals::ERRORS), "Recommend requests degraded", m.errors.clone());
        registry.register(signals::LATENCY, "Recommend latency, whole call", m.latency.clone());
        registry.register("reco_stage_duration_seconds", "Latency of one recommend stage", m.stage_latency.clone());
        registry.register("reco_fallbacks", "Recommendations answered with fallback items", m.fallbacks.clone());
        registry.register("reco_token_rejects", "Events refused for their token", m.token_rejects.clone());
        registry.register("reco_events", "Events accepted, by type", m.events.clone());
        registry.register(
            "reco_duplicate_events",
            "Events accepted again for a request and item already recorded, not counted",
            m.duplicate_events.clone(),
        );
        registry.register(
            "reco_dedup_evictions",
            "In-memory deduplication entries evicted before their token expired (such an event can count again)",
            m.dedup_evictions.clone(),
        );
        registry.register(counter_name(signals::SHADOW_REQUESTS), "Mirrored requests", m.shadow_requests.clone());
        registry.register(counter_name(signals::SHADOW_ERRORS), "Mirrored requests failed", m.shadow_errors.clone());
        registry.register("reco_shadow_dropped", "Mirrored requests dropped (saturated)", m.shadow_dropped.clone());
        registry.register(signals::SHADOW_LATENCY, "Latency of mirrored requests", m.shadow_latency.clone());
        registry.register("reco_shadow_overlap", "overlap@K of shadow and served items", m.shadow_overlap.clone());
        registry.register(
            "reco_routing_reload_errors",
            "Routing or endpoints files refused",
            m.routing_reload_errors.clone(),
        );
        registry.register("reco_cache_requests", "Cache lookups", m.cache_requests.clone());
        registry.register(
            "reco_page_items",
            "Items on the pages a version produced (served or mirrored), by the candidate source that found them",
            m.page_items.clone(),
        );
        registry.register(
            "reco_page_intra_list_diversity",
            "Mean cosine distance between the item embeddings of a page a version produced",
            m.page_intra_list_diversity.clone(),
        );
        registry.register(
            "reco_page_category_entropy_bits",
            "Shannon entropy of the categories on a page a version produced",
            m.page_category_entropy.clone(),
        );
        registry.register(
            "reco_event_dwell_seconds",
            "Dwell time reported with an event, by the version that served the item",
            m.dwell.clone(),
        );
        metrics
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn series_carry_the_names_and_labels_the_operator_reads() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let labels = VersionLabels { pipeline: "explore".into(), model_version: "v1".into() };
        for family in [&metrics.requests, &metrics.errors] {
            family.get_or_create(&labels).inc();
        }
        let grouped = GroupLabels { pipeline: "explore".into(), model_version: "v1".into(), user_group: 417 };
        for family in [&metrics.impressions, &metrics.clicks] {
            family.get_or_create(&grouped).inc();
        }
        metrics.latency.get_or_create(&labels).observe(0.05);
        metrics.shadow_requests.get_or_create(&labels).inc();
        metrics.shadow_errors.get_or_create(&labels).inc();
        metrics.shadow_latency.get_or_create(&labels).observe(0.05);
        let mut text = String::new();
        encode(&mut text, &registry).expect("encodes");
        for name in [signals::IMPRESSIONS, signals::CLICKS] {
            let line =
                format!("{name}{{pipeline=\"explore\",model_version=\"v1\",{}=\"417\"}} 1", signals::USER_GROUP_LABEL);
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }
        for name in [signals::REQUESTS, signals::ERRORS, signals::SHADOW_REQUESTS, signals::SHADOW_ERRORS] {
            let line = format!("{name}{{pipeline=\"explore\",model_version=\"v1\"}} 1");
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }
        for name in [signals::LATENCY, signals::SHADOW_LATENCY] {
            let line = format!("{name}_bucket{{le=\"0.5\",pipeline=\"explore\",model_version=\"v1\"}} 1");
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn every_series_is_documented() {
        let mut registry = Registry::default();
        Metrics::register(&mut registry);
        let docs =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/metrics.md")).expect("docs");
        // Families without series are not encoded; the registry's descriptors name them all.
        let described = format!("{registry:?}");
        let names: Vec<&str> = described.split("name: \"").skip(1).filter_map(|rest| rest.split('"').next()).collect();
        assert!(names.len() >= 20, "{names:?}");
        for name in names {
            // Counters are documented with the `_total` their samples carry.
            let documented = [format!("`{name}`"), format!("`{name}_total`")].iter().any(|n| docs.contains(n.as_str()));
            assert!(documented, "{name} is not in docs/metrics.md");
        }
    }

    #[test]
    fn a_routed_version_counts_every_group_from_zero() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.start_groups_at_zero("explore", "v2");
        let mut text = String::new();
        encode(&mut text, &registry).expect("encodes");
        for name in [signals::IMPRESSIONS, signals::CLICKS] {
            for group in [0, 999] {
                let line = format!(
                    "{name}{{pipeline=\"explore\",model_version=\"v2\",{}=\"{group}\"}} 0",
                    signals::USER_GROUP_LABEL
                );
                assert!(text.contains(&line), "{line} missing");
            }
        }
        let series = text.lines().filter(|line| line.starts_with(signals::CLICKS)).count();
        assert_eq!(series, USER_GROUPS as usize);
    }
}
