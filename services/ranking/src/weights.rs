//! `--value-weights`: how the operator's task weights map onto the model's value model.
//!
//! The value of a candidate is
//!
//! ```text
//! value = p(t0) ^ w(t0) * (1 + Σ_{i ≥ 1} w(ti) * p(ti))
//! ```
//!
//! where `t0, t1, …` are the ranker's tasks in output order (`RankerConfig::tasks`,
//! `["interaction", "high_rating"]` for models trained by `reco train`). With `w(interaction) = 1`
//! this is exactly the trained [`ValueModel`]: `p(interaction) * (1 + w * p(high_rating))`.
//! `w(t0)` is an exponent (0 ignores the first task, 2 sharpens it); the others are linear bonus
//! weights. Tasks the flag does not name keep the trained value model's weight (1 for the first
//! task, `high_rating_weight` for the second, 0 for any further one), so the CRD default
//! `click=1` serves the model as trained. Aliases: `click` → `interaction`, `like` →
//! `high_rating`. All weights must be finite and ≥ 0.

use std::fmt;
use std::str::FromStr;

use reco_model::scoring::ValueModel;

/// Operator names accepted for the model's task names.
pub const ALIASES: [(&str, &str); 2] = [("click", "interaction"), ("like", "high_rating")];

/// The most entries one flag may carry (there are a handful of tasks).
const MAX_ENTRIES: usize = 64;

/// Why a `--value-weights` value is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WeightsError {
    #[error("value weight {0:?} is not `task=weight`")]
    Syntax(String),
    #[error("value weight for {task:?}: {value:?} is not a number")]
    Number { task: String, value: String },
    #[error("value weight for {task:?} must be finite and >= 0, got {value}")]
    Range { task: String, value: f64 },
    #[error("more than {MAX_ENTRIES} value weights")]
    TooMany,
    #[error("unknown task {task:?} in --value-weights; valid: {valid}")]
    UnknownTask { task: String, valid: String },
    #[error("task {0:?} is weighted twice in --value-weights (an alias and its name count as one)")]
    Duplicate(String),
    #[error("the ranker has no tasks")]
    NoTasks,
}

/// The parsed flag: `task=weight` pairs as written, not yet checked against a model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValueWeights(pub Vec<(String, f64)>);

impl FromStr for ValueWeights {
    type Err = WeightsError;

    /// `click=1,like=0.5`; whitespace around names and numbers is ignored; an empty string means
    /// no overrides.
    fn from_str(s: &str) -> Result<Self, WeightsError> {
        let mut out = Vec::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if out.len() == MAX_ENTRIES {
                return Err(WeightsError::TooMany);
            }
            let (task, value) = entry.split_once('=').ok_or_else(|| WeightsError::Syntax(entry.to_owned()))?;
            let (task, value) = (task.trim(), value.trim());
            if task.is_empty() {
                return Err(WeightsError::Syntax(entry.to_owned()));
            }
            let w: f64 =
                value.parse().map_err(|_| WeightsError::Number { task: task.to_owned(), value: value.to_owned() })?;
            if !w.is_finite() || w < 0.0 {
                return Err(WeightsError::Range { task: task.to_owned(), value: w });
            }
            out.push((task.to_owned(), w));
        }
        Ok(ValueWeights(out))
    }
}

impl fmt::Display for ValueWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(t, w)| format!("{t}={w}")).collect();
        f.write_str(&parts.join(","))
    }
}

/// Resolved weights, one per model task in output order (see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskWeights {
    pub tasks: Vec<String>,
    pub weights: Vec<f64>,
}

impl TaskWeights {
    /// The trained value model's weights for `tasks`, overridden by `overrides`.
    pub fn resolve(tasks: &[String], trained: &ValueModel, overrides: &ValueWeights) -> Result<Self, WeightsError> {
        if tasks.is_empty() {
            return Err(WeightsError::NoTasks);
        }
        let mut weights: Vec<f64> = (0..tasks.len())
            .map(|i| match i {
                0 => 1.0,
                1 => trained.high_rating_weight,
                _ => 0.0,
            })
            .collect();
        let mut seen = vec![false; tasks.len()];
        for (name, w) in &overrides.0 {
            let canonical = ALIASES.iter().find(|(a, _)| a == name).map_or(name.as_str(), |(_, t)| t);
            let i = tasks
                .iter()
                .position(|t| t == canonical)
                .ok_or_else(|| WeightsError::UnknownTask { task: name.clone(), valid: valid_names(tasks) })?;
            if std::mem::replace(&mut seen[i], true) {
                return Err(WeightsError::Duplicate(tasks[i].clone()));
            }
            weights[i] = *w;
        }
        Ok(TaskWeights { tasks: tasks.to_vec(), weights })
    }

    /// The value of one row of task probabilities (in task order).
    pub fn value(&self, p: &[f32]) -> f32 {
        let base = match (p.first(), self.weights.first()) {
            // The trained exponent: exactly `p0`, as the trainer computes it.
            (Some(&p0), Some(&1.0)) => p0,
            (Some(&p0), Some(&w0)) => p0.powf(w0 as f32),
            _ => return f32::NAN,
        };
        let bonus = p.iter().zip(&self.weights).skip(1).fold(0f32, |acc, (&pi, &wi)| acc + pi * wi as f32);
        base * (bonus + 1.0)
    }
}

/// The task names and aliases a model accepts, for error messages.
fn valid_names(tasks: &[String]) -> String {
    tasks
        .iter()
        .map(|t| match ALIASES.iter().find(|(_, c)| c == t) {
            Some((alias, _)) => format!("{t} (alias {alias})"),
            None => t.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tasks() -> Vec<String> {
        vec!["interaction".into(), "high_rating".into()]
    }
    const TRAINED: ValueModel = ValueModel { high_rating_weight: 0.5, ranker_blend: 0.5 };

    fn resolve(s: &str) -> Result<TaskWeights, WeightsError> {
        TaskWeights::resolve(&tasks(), &TRAINED, &s.parse()?)
    }

    #[test]
    fn the_operator_default_serves_the_trained_model() {
        assert_eq!(resolve("").unwrap().weights, [1.0, 0.5]);
        assert_eq!(resolve("click=1").unwrap().weights, [1.0, 0.5]);
        assert_eq!(resolve("click=1,like=0.25").unwrap().weights, [1.0, 0.25]);
        assert_eq!(resolve(" interaction = 2 , high_rating=0 ").unwrap().weights, [2.0, 0.0]);
    }

    #[test]
    fn value_matches_the_trained_formula() {
        let w = resolve("").unwrap();
        let (p0, p1) = (0.3f32, 0.8f32);
        assert_eq!(w.value(&[p0, p1]), p0 * (p1 * 0.5 + 1.0));
        let no_click = resolve("click=0,like=1").unwrap();
        assert_eq!(no_click.value(&[p0, p1]), 1.0 + p1);
        assert!(w.value(&[]).is_nan());
    }

    #[test]
    fn bad_weights_name_the_problem() {
        let e = resolve("purchase=1").unwrap_err().to_string();
        assert!(e.contains("purchase") && e.contains("interaction (alias click)") && e.contains("high_rating"), "{e}");
        assert_eq!(resolve("click=1,interaction=2").unwrap_err(), WeightsError::Duplicate("interaction".into()));
        assert!(matches!(resolve("click"), Err(WeightsError::Syntax(_))));
        assert!(matches!(resolve("=1"), Err(WeightsError::Syntax(_))));
        assert!(matches!(resolve("click=x"), Err(WeightsError::Number { .. })));
        assert!(matches!(resolve("click=-1"), Err(WeightsError::Range { .. })));
        assert!(matches!(resolve("click=NaN"), Err(WeightsError::Range { .. })));
        assert!(matches!(resolve("click=inf"), Err(WeightsError::Range { .. })));
        let many = vec!["click=1"; MAX_ENTRIES + 1].join(",");
        assert_eq!(many.parse::<ValueWeights>().unwrap_err(), WeightsError::TooMany);
        assert_eq!(TaskWeights::resolve(&[], &TRAINED, &ValueWeights::default()), Err(WeightsError::NoTasks));
    }

    #[test]
    fn display_round_trips() {
        let w: ValueWeights = "click=1,like=0.5".parse().unwrap();
        assert_eq!(w.to_string().parse::<ValueWeights>().unwrap(), w);
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_strings_never_panics(s in ".{0,200}") {
            if let Ok(w) = s.parse::<ValueWeights>() {
                prop_assert!(w.0.iter().all(|(t, v)| !t.is_empty() && v.is_finite() && *v >= 0.0));
                let _ = TaskWeights::resolve(&tasks(), &TRAINED, &w);
            }
        }

        #[test]
        fn structured_weights_parse_back(entries in proptest::collection::vec(("[a-z_]{1,12}", 0.0f64..1e6), 0..8)) {
            let s = entries.iter().map(|(t, w)| format!("{t}={w}")).collect::<Vec<_>>().join(",");
            let parsed: ValueWeights = s.parse().unwrap();
            prop_assert_eq!(parsed.0, entries);
        }
    }
}
