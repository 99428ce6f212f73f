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

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn overlap_histogram() -> Histogram {
    Histogram::new([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
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
