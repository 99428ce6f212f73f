//! Status conditions as Kubernetes tools expect them: one per type, with a
//! transition time that changes only when the status does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The condition types reco sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionType {
    /// Everything the spec asks for is applied and serving.
    Ready,
    /// A model version is being rolled out.
    Progressing,
    /// Something is wrong but stable keeps serving (invalid spec, missing artifact, rollback).
    Degraded,
}

impl ConditionType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::Progressing => "Progressing",
            Self::Degraded => "Degraded",
        }
    }
}

/// Sets `type_` in `conditions`, keeping its `lastTransitionTime` when the
/// status is unchanged so that re-applying the same state is a no-op.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: ConditionType,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: &Time,
) {
    let status = if status { "True" } else { "False" };
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_.as_str()) {
        Some(existing) => {
            if existing.status != status {
                existing.last_transition_time = now.clone();
            }
            existing.status = status.to_owned();
            existing.reason = reason.to_owned();
            existing.message = message;
            existing.observed_generation = observed_generation;
        }
        None => conditions.push(Condition {
            type_: type_.as_str().to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation,
            last_transition_time: now.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn keeps_transition_time_when_status_is_unchanged() {
        let mut conditions = Vec::new();
        set_condition(&mut conditions, ConditionType::Ready, true, "Applied", "ok", Some(1), &time(10));
        set_condition(&mut conditions, ConditionType::Ready, true, "Applied", "still ok", Some(2), &time(20));
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, time(10));
        assert_eq!(conditions[0].message, "still ok");
        assert_eq!(conditions[0].observed_generation, Some(2));

        set_condition(&mut conditions, ConditionType::Ready, false, "InvalidSpec", "bad", Some(3), &time(30));
        assert_eq!(conditions[0].last_transition_time, time(30));
        assert_eq!(conditions[0].status, "False");
    }

    #[test]
    fn one_condition_per_type() {
        let mut conditions = Vec::new();
        set_condition(&mut conditions, ConditionType::Ready, true, "A", "", None, &time(1));
        set_condition(&mut conditions, ConditionType::Degraded, false, "B", "", None, &time(1));
        set_condition(&mut conditions, ConditionType::Ready, true, "A", "", None, &time(2));
        let types: Vec<_> = conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Ready", "Degraded"]);
    }
}
