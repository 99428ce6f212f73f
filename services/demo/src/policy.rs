//! The demo's rollout policy: the operator's policy shape (a
//! RecommenderPipeline `spec`), scaled so one machine decides a rollout in a
//! few minutes, and validated by the operator's own conversion.

use std::time::Duration;

use reco_api::RecommenderPipelineSpec;
use reco_operator::policy::{analysis_interval, rollout_policy};
use reco_rollout::RolloutPolicy;

/// The pipeline spec the demo runs, in the RecommenderPipeline YAML shape.
///
/// Shorter than the CRD defaults because the replay simulator sends tens of
/// requests a second instead of a site's traffic, and because replayed users
/// use up their held-out future as they click (CTR falls as a run goes on,
/// so decisions must come early): the shadow step lasts 10 s, the canary
/// steps need 1,000 to 3,000 canary impressions and time out (rolling back)
/// after five minutes for the first step (its look must survive a killed
/// Prometheus or gateway, and a page the gateway re-serves from its cache is
/// not new evidence), two for the others. The CTR
/// margin is 30% instead of 5%: the sequential test's mixture scales with the
/// margin, its variance is measured across the ~90 users a 10% canary gets,
/// and with a few thousand impressions a smaller margin cannot decide before
/// the users' futures run out, while the demo's versions differ by far more
/// (v2 about doubles v1's CTR early on, v3 loses about half of v2's). The p99
/// guardrail is 1 s (a debug build on a busy laptop serves in hundreds of ms);
/// confidence (95%) and the error guardrail (1%) are the operator's defaults;
/// the runner looks every 2 s.
pub const DEMO_PIPELINE_SPEC: &str = "\
rollout:
  steps:
    - shadow: {duration: 10s}
    - canary: {weight: 10, minImpressions: 1000, maxDuration: 5m}
    - canary: {weight: 25, minImpressions: 2000, maxDuration: 2m}
    - canary: {weight: 50, minImpressions: 3000, maxDuration: 2m}
  analysis:
    interval: 2s
    ctrMargin: 0.3
    confidence: 0.95
    maxP99LatencyMs: 1000
    maxErrorRate: 0.01
    onTimeout: Rollback
";

/// Why a pipeline spec cannot drive the local runner.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("pipeline spec is not valid YAML for a RecommenderPipeline spec: {0}")]
    Parse(String),
    #[error("invalid rollout policy: {0}")]
    Invalid(#[from] reco_operator::policy::InvalidSpec),
}

/// A validated policy and how often the runner looks at the metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct DemoPolicy {
    pub policy: RolloutPolicy,
    pub interval: Duration,
}

/// Parses a RecommenderPipeline spec (YAML) and validates its rollout with
/// the same conversion the operator applies (`rollout_policy`,
/// `analysis_interval`), so the demo cannot run a policy the operator would
/// reject.
pub fn parse_policy(yaml: &str) -> Result<DemoPolicy, PolicyError> {
    let spec: RecommenderPipelineSpec = serde_saphyr::from_str(yaml).map_err(|e| PolicyError::Parse(e.to_string()))?;
    Ok(DemoPolicy { policy: rollout_policy(&spec)?, interval: analysis_interval(&spec)? })
}

/// The built-in demo policy ([`DEMO_PIPELINE_SPEC`]).
pub fn demo_policy() -> Result<DemoPolicy, PolicyError> {
    parse_policy(DEMO_PIPELINE_SPEC)
}

#[cfg(test)]
mod tests {
    use reco_rollout::{OnTimeout, Step};

    use super::*;

    #[test]
    fn demo_policy_is_valid_and_shaped_like_the_operators() {
        let DemoPolicy { policy, interval } = demo_policy().expect("the demo policy validates");
        assert_eq!(interval, Duration::from_secs(2));
        assert!(matches!(policy.steps[0], Step::Shadow { duration } if duration == Duration::from_secs(10)));
        assert_eq!(policy.canary_weights(), [10, 25, 50]);
        assert_eq!(policy.analysis.on_timeout, OnTimeout::Rollback);
        assert_eq!(policy.analysis.confidence, 0.95);
    }

    #[test]
    fn invalid_policies_are_rejected_with_the_field() {
        let decreasing = "rollout:\n  steps:\n    - canary: {weight: 50, minImpressions: 10}\n    - canary: {weight: 10, minImpressions: 10}\n";
        let error = parse_policy(decreasing).unwrap_err().to_string();
        assert!(error.contains("spec.rollout.steps[1].canary.weight"), "{error}");

        let zero = "rollout:\n  steps:\n    - shadow: {duration: 0s}\n";
        let error = parse_policy(zero).unwrap_err().to_string();
        assert!(error.contains("spec.rollout.steps[0].shadow.duration"), "{error}");

        for garbage in ["rollout: [1, 2", "rollout:\n  steps: 3\n", "\u{0}\u{1}"] {
            assert!(matches!(parse_policy(garbage), Err(PolicyError::Parse(_))), "{garbage:?}");
        }
    }
}
