//! Label and field selectors for list, watch and delete-collection.
//!
//! Owns parsing the `labelSelector` / `fieldSelector` query strings in the real server's grammar
//! and matching them against stored objects. Parse failures become `400 BadRequest`.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// One clause of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
    GreaterThan(String, i64),
    LessThan(String, i64),
}

/// A parsed `labelSelector`; all requirements must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<LabelRequirement>,
}

impl LabelSelector {
    /// Parses `app=web,tier in (a,b),!legacy` style selectors.
    pub fn parse(selector: &str) -> Result<Self, ApiError> {
        let requirements = split_top_level(selector)
            .into_iter()
            .map(str::trim)
            .filter(|clause| !clause.is_empty())
            .map(parse_label_requirement)
            .collect::<Result<_, _>>()?;
        Ok(Self { requirements })
    }

    /// Whether `object`'s `metadata.labels` satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let empty = Map::new();
        let labels = object.pointer("/metadata/labels").and_then(Value::as_object).unwrap_or(&empty);
        let label = |key: &str| labels.get(key).and_then(Value::as_str);
        self.requirements.iter().all(|requirement| match requirement {
            LabelRequirement::Equals(key, value) => label(key) == Some(value.as_str()),
            LabelRequirement::NotEquals(key, value) => label(key) != Some(value.as_str()),
            LabelRequirement::In(key, values) => label(key).is_some_and(|l| values.iter().any(|v| v == l)),
            LabelRequirement::NotIn(key, values) => !label(key).is_some_and(|l| values.iter().any(|v| v == l)),
            LabelRequirement::Exists(key) => label(key).is_some(),
            LabelRequirement::DoesNotExist(key) => label(key).is_none(),
            LabelRequirement::GreaterThan(key, bound) => {
                label(key).and_then(|l| l.parse::<i64>().ok()).is_some_and(|n| n > *bound)
            }
            LabelRequirement::LessThan(key, bound) => {
                label(key).and_then(|l| l.parse::<i64>().ok()).is_some_and(|n| n < *bound)
            }
        })
    }
}

/// Splits on commas that are not inside a `( ... )` value set.
fn split_top_level(selector: &str) -> Vec<&str> {
    let mut clauses = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (index, character) in selector.char_indices() {
        match character {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                clauses.push(&selector[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    clauses.push(&selector[start..]);
    clauses
}

fn invalid_selector(clause: &str) -> ApiError {
    ApiError::bad_request(format!("unable to parse requirement: invalid label selector {clause:?}"))
}

fn parse_label_requirement(clause: &str) -> Result<LabelRequirement, ApiError> {
    let checked_key = |key: &str| {
        let key = key.trim();
        let valid =
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if valid { Ok(key.to_owned()) } else { Err(invalid_selector(clause)) }
    };
    if let Some(key) = clause.strip_prefix('!') {
        return Ok(LabelRequirement::DoesNotExist(checked_key(key)?));
    }
    for (operator, build) in [
        ("!=", LabelRequirement::NotEquals as fn(String, String) -> LabelRequirement),
        ("==", LabelRequirement::Equals),
        ("=", LabelRequirement::Equals),
    ] {
        if let Some((key, value)) = clause.split_once(operator) {
            return Ok(build(checked_key(key)?, value.trim().to_owned()));
        }
    }
    for (operator, greater) in [(">", true), ("<", false)] {
        if let Some((key, value)) = clause.split_once(operator) {
            let bound = value.trim().parse::<i64>().map_err(|_| invalid_selector(clause))?;
            let key = checked_key(key)?;
            return Ok(if greater {
                LabelRequirement::GreaterThan(key, bound)
            } else {
                LabelRequirement::LessThan(key, bound)
            });
        }
    }
    let mut words = clause.splitn(2, char::is_whitespace);
    let key = checked_key(words.next().unwrap_or_default())?;
    let Some(rest) = words.next().map(str::trim) else {
        return Ok(LabelRequirement::Exists(key));
    };
    let (negated, set) = if let Some(set) = rest.strip_prefix("notin") {
        (true, set)
    } else if let Some(set) = rest.strip_prefix("in") {
        (false, set)
    } else {
        return Err(invalid_selector(clause));
    };
    let values: Vec<String> = set
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| invalid_selector(clause))?
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    Ok(if negated { LabelRequirement::NotIn(key, values) } else { LabelRequirement::In(key, values) })
}

/// A parsed `fieldSelector` over `metadata.name` and `metadata.namespace`, the fields every
/// resource supports; per-type fields (`spec.nodeName`, ...) are rejected like unknown ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<(FieldName, bool, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldName {
    Name,
    Namespace,
}

impl FieldSelector {
    /// Parses `metadata.name=web,metadata.namespace!=kube-system`.
    pub fn parse(selector: &str) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        for clause in selector.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            let (field, equal, value) = if let Some((field, value)) = clause.split_once("!=") {
                (field, false, value)
            } else if let Some((field, value)) = clause.split_once("==") {
                (field, true, value)
            } else if let Some((field, value)) = clause.split_once('=') {
                (field, true, value)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{clause}'; can't understand '{clause}'"
                )));
            };
            let field = match field.trim() {
                "metadata.name" => FieldName::Name,
                "metadata.namespace" => FieldName::Namespace,
                other => {
                    return Err(ApiError::bad_request(format!("field label not supported: {other}")));
                }
            };
            requirements.push((field, equal, value.trim().to_owned()));
        }
        Ok(Self { requirements })
    }

    /// Whether `object` satisfies every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        self.requirements.iter().all(|(field, equal, value)| {
            let pointer = match field {
                FieldName::Name => "/metadata/name",
                FieldName::Namespace => "/metadata/namespace",
            };
            let actual = object.pointer(pointer).and_then(Value::as_str).unwrap_or_default();
            (actual == value) == *equal
        })
    }
}

/// Both selectors of a request together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selectors {
    /// From `labelSelector`.
    pub labels: LabelSelector,
    /// From `fieldSelector`.
    pub fields: FieldSelector,
}

impl Selectors {
    /// Whether `object` passes both selectors.
    pub fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labelled(labels: Value) -> Value {
        json!({ "metadata": { "name": "a", "namespace": "ns", "labels": labels } })
    }

    #[test]
    fn label_selector_grammar() -> Result<(), ApiError> {
        let object = labelled(json!({ "app": "web", "tier": "front", "rank": "3" }));
        for (selector, expected) in [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("missing!=x", true),
            ("tier in (front, back)", true),
            ("tier notin (front,back)", false),
            ("missing notin (a)", true),
            ("app,!legacy", true),
            ("!app", false),
            ("rank>2,rank<4", true),
            ("app=web,tier in (back)", false),
            ("", true),
        ] {
            assert_eq!(LabelSelector::parse(selector)?.matches(&object), expected, "{selector}");
        }
        Ok(())
    }

    #[test]
    fn malformed_selectors_are_bad_requests() {
        for selector in ["tier in front", "a b c", "x>y", "=v"] {
            assert_eq!(LabelSelector::parse(selector).map_err(|e| e.code), Err(400), "{selector}");
        }
        assert_eq!(FieldSelector::parse("spec.nodeName=a").map_err(|e| e.code), Err(400));
    }

    #[test]
    fn field_selector_on_name_and_namespace() -> Result<(), ApiError> {
        let object = labelled(json!({}));
        assert!(FieldSelector::parse("metadata.name=a,metadata.namespace==ns")?.matches(&object));
        assert!(!FieldSelector::parse("metadata.name!=a")?.matches(&object));
        Ok(())
    }
}
