//! JSON merge patches (RFC 7386) that turn one document into another.
//!
//! Status types skip `None` fields when serialized, and a merge patch that
//! merely omits a key leaves the stored value in place: a cleared canary
//! would linger in status. The diff sends `null` for every removed key.

use serde_json::{Map, Value};

/// The merge patch that turns `old` into `new`.
pub fn diff(old: &Value, new: &Value) -> Value {
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => {
            let mut patch = Map::new();
            for (key, new_value) in new {
                match old.get(key) {
                    Some(old_value) if old_value == new_value => {}
                    Some(old_value) => {
                        patch.insert(key.clone(), diff(old_value, new_value));
                    }
                    None => {
                        patch.insert(key.clone(), new_value.clone());
                    }
                }
            }
            for key in old.keys().filter(|k| !new.contains_key(*k)) {
                patch.insert(key.clone(), Value::Null);
            }
            Value::Object(patch)
        }
        _ => new.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// RFC 7386 application, to check that a diff really turns old into new.
    fn apply(target: &Value, patch: &Value) -> Value {
        match patch {
            Value::Object(patch) => {
                let mut result = target.as_object().cloned().unwrap_or_default();
                for (key, value) in patch {
                    if value.is_null() {
                        result.remove(key);
                    } else {
                        let merged = apply(result.get(key).unwrap_or(&Value::Null), value);
                        result.insert(key.clone(), merged);
                    }
                }
                Value::Object(result)
            }
            other => other.clone(),
        }
    }

    #[test]
    fn removed_keys_become_null_and_unchanged_keys_are_left_out() {
        let old = json!({"rollout": {"stable": "v1", "candidate": {"version": "v2", "step": 2}}, "phase": "Canary", "weight": 50});
        let new = json!({"rollout": {"stable": "v2"}, "phase": "Idle", "weight": 50});
        let patch = diff(&old, &new);
        assert_eq!(patch, json!({"rollout": {"stable": "v2", "candidate": null}, "phase": "Idle"}));
        assert_eq!(apply(&old, &patch), new);
    }

    #[test]
    fn arrays_and_scalars_are_replaced_whole() {
        let old = json!({"conditions": [{"type": "Ready"}], "n": 1});
        let new = json!({"conditions": [{"type": "Ready"}, {"type": "Degraded"}], "n": "one"});
        let patch = diff(&old, &new);
        assert_eq!(patch, new);
        assert_eq!(apply(&old, &patch), new);
    }

    #[test]
    fn an_absent_old_document_gives_the_whole_new_one() {
        let new = json!({"phase": "Idle"});
        assert_eq!(diff(&Value::Null, &new), new);
        assert_eq!(diff(&json!({}), &new), new);
    }
}
