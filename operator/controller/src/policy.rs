//! Conversion of a pipeline's Kubernetes-shaped rollout spec into the
//! engine's policy. It re-checks every rule of the schema, because a spec can reach
//! the operator without it (an older CRD, a cluster without CEL), and names
//! the offending field so users can fix it.

use std::str::FromStr;
use std::time::Duration;

use reco_rollout::{AnalysisPolicy, OfflineGate, OnTimeout, RolloutPolicy, Step};

use reco_api::{AnalysisSpec, MetricSourceKind, RecommenderPipelineSpec, RolloutStepSpec, TimeoutAction};

/// A spec the operator cannot act on, with the field at fault.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidSpec {
    /// JSON path of the field, e.g. `spec.rollout.steps[1].canary.weight`.
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> InvalidSpec {
    InvalidSpec { field: field.into(), message: message.into() }
}

/// Parses a Kubernetes duration (`30s`, `5m`, `1h30m`).
pub fn parse_duration(field: &str, value: &str) -> Result<Duration, InvalidSpec> {
    let parsed = kube::core::Duration::from_str(value)
        .map_err(|e| invalid(field, format!("{value:?} is not a duration like 30s, 5m or 1h30m ({e})")))?;
    if parsed.is_negative() {
        return Err(invalid(field, format!("{value:?} must not be negative")));
    }
    let duration = Duration::from(parsed);
    if duration.is_zero() {
        return Err(invalid(field, "must be longer than zero"));
    }
    Ok(duration)
}

/// A duration, where zero (`0s`) turns CUPED off.
fn pre_rollout_window(field: &str, value: &str) -> Result<Option<Duration>, InvalidSpec> {
    let zero = kube::core::Duration::from_str(value).is_ok_and(|d| Duration::from(d).is_zero());
    if zero { Ok(None) } else { parse_duration(field, value).map(Some) }
}

fn open_unit_interval(field: &str, value: f64) -> Result<f64, InvalidSpec> {
    if value > 0.0 && value < 1.0 {
        Ok(value)
    } else {
        Err(invalid(field, format!("{value} must be strictly between 0 and 1")))
    }
}

/// The rollout policy the engine runs, or the first field that is invalid.
pub fn rollout_policy(pipeline: &RecommenderPipelineSpec) -> Result<RolloutPolicy, InvalidSpec> {
    let spec = &pipeline.rollout;
    if spec.steps.is_empty() {
        return Err(invalid("spec.rollout.steps", "needs at least one step"));
    }
    let mut steps = Vec::with_capacity(spec.steps.len());
    let mut last_weight = 0u8;
    for (i, step) in spec.steps.iter().enumerate() {
        let field = format!("spec.rollout.steps[{i}]");
        let step = convert_step(&field, step)?;
        if matches!(step, Step::Shadow { .. }) && last_weight > 0 {
            // Weights only grow within a rollout: no mirroring after users were served.
            return Err(invalid(format!("{field}.shadow"), "shadow steps must come before canary steps"));
        }
        if let Step::Canary { weight, .. } = step {
            if weight <= last_weight {
                return Err(invalid(
                    format!("{field}.canary.weight"),
                    format!("canary weights must be strictly increasing ({weight} follows {last_weight})"),
                ));
            }
            last_weight = weight;
        }
        steps.push(step);
    }
    let offline_gate = match &spec.offline_gate {
        None => None,
        Some(gate) => {
            if gate.metric.is_empty() {
                return Err(invalid("spec.rollout.offlineGate.metric", "must name an offline metric"));
            }
            if !(0.0..1.0).contains(&gate.max_regression) {
                return Err(invalid(
                    "spec.rollout.offlineGate.maxRegression",
                    format!("{} must be in [0, 1)", gate.max_regression),
                ));
            }
            Some(OfflineGate { metric: gate.metric.clone(), max_regression: gate.max_regression })
        }
    };
    Ok(RolloutPolicy { steps, analysis: convert_analysis(&spec.analysis)?, offline_gate })
}

/// How often the analysis reads metrics.
pub fn analysis_interval(pipeline: &RecommenderPipelineSpec) -> Result<Duration, InvalidSpec> {
    parse_duration("spec.rollout.analysis.interval", &pipeline.rollout.analysis.interval)
}
/// How long a version that left the routing keeps its objects; `0s` is none.
pub fn scale_down_delay(pipeline: &RecommenderPipelineSpec) -> Result<Duration, InvalidSpec> {
    let (field, value) = ("spec.rollout.scaleDownDelay", &pipeline.rollout.scale_down_delay);
    let zero = kube::core::Duration::from_str(value).is_ok_and(|d| Duration::from(d).is_zero());
    if zero { Ok(Duration::ZERO) } else { parse_duration(field, value) }
}

fn convert_step(field: &str, step: &RolloutStepSpec) -> Result<Step, InvalidSpec> {
    match (&step.shadow, &step.canary) {
        (Some(shadow), None) => {
            Ok(Step::Shadow { duration: parse_duration(&format!("{field}.shadow.duration"), &shadow.duration)? })
        }
        (None, Some(canary)) => {
            if !(1..=100).contains(&canary.weight) {
                return Err(invalid(
                    format!("{field}.canary.weight"),
                    format!("{} must be between 1 and 100", canary.weight),
                ));
            }
            if canary.min_impressions == 0 {
                return Err(invalid(format!("{field}.canary.minImpressions"), "must be above zero"));
            }
            Ok(Step::Canary {
                weight: canary.weight,
                min_impressions: canary.min_impressions,
                max_duration: parse_duration(&format!("{field}.canary.maxDuration"), &canary.max_duration)?,
            })
        }
        _ => Err(invalid(field, "a step is exactly one of shadow or canary")),
    }
}

fn convert_analysis(spec: &AnalysisSpec) -> Result<AnalysisPolicy, InvalidSpec> {
    const FIELD: &str = "spec.rollout.analysis";
    if spec.source == MetricSourceKind::Prometheus && spec.prometheus_url.as_deref().is_none_or(str::is_empty) {
        return Err(invalid(format!("{FIELD}.prometheusUrl"), "is required when source is Prometheus"));
    }
    if !(0.0..=1.0).contains(&spec.max_error_rate) {
        return Err(invalid(
            format!("{FIELD}.maxErrorRate"),
            format!("{} must be between 0 and 1", spec.max_error_rate),
        ));
    }
    Ok(AnalysisPolicy {
        ctr_margin: open_unit_interval(&format!("{FIELD}.ctrMargin"), spec.ctr_margin)?,
        confidence: open_unit_interval(&format!("{FIELD}.confidence"), spec.confidence)?,
        max_p99_latency: spec.max_p99_latency_ms.map(|ms| Duration::from_millis(ms.into())),
        max_error_rate: spec.max_error_rate,
        on_timeout: match spec.on_timeout {
            TimeoutAction::Rollback => OnTimeout::Rollback,
            TimeoutAction::Proceed => OnTimeout::Proceed,
        },
        pre_rollout_window: pre_rollout_window(&format!("{FIELD}.preRolloutWindow"), &spec.pre_rollout_window)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reco_api::{CanaryStepSpec, OfflineGateSpec, ShadowStepSpec};

    fn canary(weight: u8) -> RolloutStepSpec {
        RolloutStepSpec {
            shadow: None,
            canary: Some(CanaryStepSpec { weight, min_impressions: 100, max_duration: "10m".into() }),
        }
    }

    fn spec_with_steps(steps: Vec<RolloutStepSpec>) -> RecommenderPipelineSpec {
        let mut spec: RecommenderPipelineSpec = serde_json::from_value(serde_json::json!({})).unwrap();
        spec.rollout.steps = steps;
        spec
    }

    #[test]
    fn default_spec_converts_to_shadow_then_increasing_canaries() {
        let spec: RecommenderPipelineSpec = serde_json::from_value(serde_json::json!({})).unwrap();
        let policy = rollout_policy(&spec).unwrap();
        assert!(matches!(policy.steps[0], Step::Shadow { duration } if duration == Duration::from_secs(600)));
        assert_eq!(policy.canary_weights(), [10, 25, 50]);
        assert_eq!(policy.analysis.on_timeout, OnTimeout::Rollback);
    }

    #[test]
    fn default_spec_is_the_policy_checked_by_simulation() {
        let spec: RecommenderPipelineSpec = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(rollout_policy(&spec).unwrap(), RolloutPolicy::recommended());
    }

    #[test]
    fn every_invalid_field_is_named() {
        let mut both = canary(10);
        both.shadow = Some(ShadowStepSpec { duration: "1m".into() });
        let mut zero_impressions = canary(10);
        zero_impressions.canary.as_mut().unwrap().min_impressions = 0;
        let mut bad_duration = canary(10);
        bad_duration.canary.as_mut().unwrap().max_duration = "ten minutes".into();
        let cases = [
            (spec_with_steps(vec![]), "spec.rollout.steps"),
            (spec_with_steps(vec![canary(20), canary(10)]), "spec.rollout.steps[1].canary.weight"),
            (spec_with_steps(vec![canary(20), canary(20)]), "spec.rollout.steps[1].canary.weight"),
            (
                spec_with_steps(vec![
                    canary(20),
                    RolloutStepSpec { shadow: Some(ShadowStepSpec { duration: "1m".into() }), canary: None },
                ]),
                "spec.rollout.steps[1].shadow",
            ),
            (spec_with_steps(vec![canary(0)]), "spec.rollout.steps[0].canary.weight"),
            (spec_with_steps(vec![canary(101)]), "spec.rollout.steps[0].canary.weight"),
            (spec_with_steps(vec![both]), "spec.rollout.steps[0]"),
            (spec_with_steps(vec![RolloutStepSpec { shadow: None, canary: None }]), "spec.rollout.steps[0]"),
            (spec_with_steps(vec![zero_impressions]), "spec.rollout.steps[0].canary.minImpressions"),
            (spec_with_steps(vec![bad_duration]), "spec.rollout.steps[0].canary.maxDuration"),
        ];
        for (spec, field) in cases {
            let err = rollout_policy(&spec).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn analysis_and_gate_ranges_are_checked() {
        let base = spec_with_steps(vec![canary(10)]);
        let mut cases = Vec::new();
        for (margin, field) in [(0.0, "ctrMargin"), (1.0, "ctrMargin"), (f64::NAN, "ctrMargin")] {
            let mut spec = base.clone();
            spec.rollout.analysis.ctr_margin = margin;
            cases.push((spec, format!("spec.rollout.analysis.{field}")));
        }
        let mut spec = base.clone();
        spec.rollout.analysis.confidence = 1.5;
        cases.push((spec, "spec.rollout.analysis.confidence".into()));
        let mut spec = base.clone();
        spec.rollout.analysis.source = MetricSourceKind::Prometheus;
        cases.push((spec, "spec.rollout.analysis.prometheusUrl".into()));
        let mut spec = base.clone();
        spec.rollout.analysis.max_error_rate = -0.1;
        cases.push((spec, "spec.rollout.analysis.maxErrorRate".into()));
        let mut spec = base.clone();
        spec.rollout.offline_gate = Some(OfflineGateSpec { metric: "ndcg@10".into(), max_regression: 1.0 });
        cases.push((spec, "spec.rollout.offlineGate.maxRegression".into()));
        let mut spec = base;
        spec.rollout.offline_gate = Some(OfflineGateSpec { metric: String::new(), max_regression: 0.0 });
        cases.push((spec, "spec.rollout.offlineGate.metric".into()));
        for (spec, field) in cases {
            assert_eq!(rollout_policy(&spec).unwrap_err().field, field);
        }
    }

    #[test]
    fn durations_follow_kubernetes_syntax() {
        assert_eq!(parse_duration("f", "1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("f", "250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(pre_rollout_window("f", "24h").unwrap(), Some(Duration::from_secs(86_400)));
        assert_eq!(pre_rollout_window("f", "0s").unwrap(), None, "0s turns CUPED off");
        assert!(pre_rollout_window("f", "soon").is_err());
        let mut spec: RecommenderPipelineSpec = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(scale_down_delay(&spec).unwrap(), Duration::from_secs(120), "default 2m");
        spec.rollout.scale_down_delay = "0s".into();
        assert_eq!(scale_down_delay(&spec).unwrap(), Duration::ZERO, "0s deletes at once");
        spec.rollout.scale_down_delay = "soon".into();
        assert_eq!(scale_down_delay(&spec).unwrap_err().field, "spec.rollout.scaleDownDelay");
        for bad in ["", "5", "-5m", "0s", "5 minutes", "1d"] {
            assert!(parse_duration("f", bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
