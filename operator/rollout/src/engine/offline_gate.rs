//! The offline gate: a candidate must not regress an offline metric (higher
//! is better) by more than the allowed fraction of stable's value before it
//! sees any live traffic.

use crate::engine::VersionInfo;
use crate::policy::OfflineGate;

/// `Err(reason)` names the metric and the values when the candidate may not start.
pub(super) fn check(
    gate: &OfflineGate,
    candidate: &VersionInfo,
    stable_name: &str,
    stable: Option<&VersionInfo>,
) -> Result<(), String> {
    let metric = &gate.metric;
    let value_of =
        |version: &VersionInfo| version.offline_metrics.get(metric).copied().filter(|value| value.is_finite());
    let Some(candidate_value) = value_of(candidate) else {
        return Err(format!("offline gate: {} has no offline metric {metric:?}", candidate.name));
    };
    let Some(stable) = stable else {
        return Err(format!("offline gate: stable version {stable_name} is gone, nothing to compare {metric:?} with"));
    };
    let Some(stable_value) = value_of(stable) else {
        return Err(format!("offline gate: stable version {} has no offline metric {metric:?}", stable.name));
    };
    let floor = stable_value - stable_value.abs() * gate.max_regression;
    if candidate_value < floor {
        return Err(format!(
            "offline gate: {metric} {candidate_value} is below {floor:.4} (stable {stable_value} less {}%)",
            100.0 * gate.max_regression
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use jiff::Timestamp;

    use super::*;

    fn version(name: &str, metric: Option<f64>) -> VersionInfo {
        VersionInfo {
            name: name.to_owned(),
            created: Timestamp::UNIX_EPOCH,
            offline_metrics: metric.map(|value| ("ndcg@10".to_owned(), value)).into_iter().collect::<BTreeMap<_, _>>(),
            broken: None,
            ready: true,
            command: None,
        }
    }

    #[test]
    fn gate_compares_candidate_with_stable() {
        let gate = OfflineGate { metric: "ndcg@10".to_owned(), max_regression: 0.1 };
        let cases = [
            // (candidate, stable, Ok or the reason's expected fragment)
            (Some(0.30), Some(0.30), Ok(())),
            (Some(0.28), Some(0.30), Ok(())),
            (Some(0.26), Some(0.30), Err("ndcg@10 0.26 is below 0.2700")),
            (Some(-1.05), Some(-1.0), Ok(())),
            (Some(-1.2), Some(-1.0), Err("is below -1.1000")),
            (None, Some(0.30), Err("v2 has no offline metric \"ndcg@10\"")),
            (Some(0.30), None, Err("stable version v1 has no offline metric")),
            (Some(f64::NAN), Some(0.30), Err("v2 has no offline metric")),
        ];
        for (candidate, stable, expected) in cases {
            let got = check(&gate, &version("v2", candidate), "v1", Some(&version("v1", stable)));
            match (got, expected) {
                (Ok(()), Ok(())) => {}
                (Err(reason), Err(fragment)) => {
                    assert!(reason.contains(fragment), "{reason:?} lacks {fragment:?}")
                }
                (got, expected) => {
                    panic!("{candidate:?} vs {stable:?}: got {got:?}, expected {expected:?}")
                }
            }
        }
    }

    #[test]
    fn gate_fails_when_stable_is_gone() {
        let gate = OfflineGate { metric: "ndcg@10".to_owned(), max_regression: 0.1 };
        let reason = check(&gate, &version("v2", Some(0.3)), "v1", None).unwrap_err();
        assert!(reason.contains("stable version v1 is gone"), "{reason}");
    }
}
