//! Field ownership for server-side apply.
//!
//! Owns the bookkeeping behind `metadata.managedFields`: which leaf fields an applied
//! configuration sets, how that set is written as `fieldsV1` (`{"f:spec":{"f:replicas":{}}}`)
//! and read back, and the path helpers the apply merge needs. The ownership state lives in the
//! stored object itself, as on a real server, so clients see and can reset it.
//!
//! Simplification: lists are atomic (owned and replaced whole); the real server merges lists
//! with `x-kubernetes-list-type: map` per key (`k:{"name":"web"}`).

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// A path of object keys from the root to a leaf field.
pub type FieldPath = Vec<String>;

/// Which part of the object an apply addresses: the main resource or the `status` subresource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `/namespaces/{ns}/{plural}/{name}`.
    Main,
    /// `/namespaces/{ns}/{plural}/{name}/status`.
    Status,
}

impl Target {
    /// The `subresource` value of a managed-fields entry.
    pub fn subresource(self) -> &'static str {
        match self {
            Target::Main => "",
            Target::Status => "status",
        }
    }
}

/// Metadata the server owns; never part of a manager's field set.
const SERVER_METADATA: [&str; 8] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "deletionTimestamp",
];

/// The leaf fields `applied` sets, as seen by `target`. With a status subresource the main
/// resource ignores `.status` and the `/status` subresource ignores everything else.
pub fn owned_paths(applied: &Value, target: Target, status_subresource: bool) -> BTreeSet<FieldPath> {
    let mut paths = BTreeSet::new();
    let Some(root) = applied.as_object() else {
        return paths;
    };
    for (key, value) in root {
        let keep = match key.as_str() {
            "apiVersion" | "kind" => false,
            "status" => target == Target::Status || !status_subresource,
            _ => target == Target::Main,
        };
        if !keep {
            continue;
        }
        if key == "metadata" {
            if let Some(metadata) = value.as_object() {
                for (field, inner) in metadata.iter().filter(|(f, _)| !SERVER_METADATA.contains(&f.as_str())) {
                    collect_leaves(inner, vec![key.clone(), field.clone()], &mut paths);
                }
            }
        } else {
            collect_leaves(value, vec![key.clone()], &mut paths);
        }
    }
    paths
}

fn collect_leaves(value: &Value, path: FieldPath, paths: &mut BTreeSet<FieldPath>) {
    match value {
        Value::Null => {}
        Value::Object(map) if !map.is_empty() => {
            for (key, inner) in map {
                let mut child = path.clone();
                child.push(key.clone());
                collect_leaves(inner, child, paths);
            }
        }
        _ => {
            paths.insert(path);
        }
    }
}

/// Renders a field set in the `FieldsV1` wire format.
pub fn to_fields_v1(paths: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for path in paths {
        let mut node = &mut root;
        for segment in path {
            let entry = node.entry(format!("f:{segment}")).or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(next) = entry else { break };
            node = next;
        }
    }
    Value::Object(root)
}

/// Reads a `FieldsV1` value back into leaf paths. Keys that are not `f:` fields (`.`, `k:`,
/// `v:`, `i:`, written by real servers) end the path at their parent.
pub fn from_fields_v1(fields: &Value) -> BTreeSet<FieldPath> {
    let mut paths = BTreeSet::new();
    walk_fields_v1(fields, Vec::new(), &mut paths);
    paths
}

fn walk_fields_v1(node: &Value, path: FieldPath, paths: &mut BTreeSet<FieldPath>) {
    let children: Vec<(&str, &Value)> = node
        .as_object()
        .map(|map| map.iter().filter_map(|(k, v)| k.strip_prefix("f:").map(|field| (field, v))).collect())
        .unwrap_or_default();
    if children.is_empty() {
        if !path.is_empty() {
            paths.insert(path);
        }
        return;
    }
    for (field, child) in children {
        let mut next = path.clone();
        next.push(field.to_owned());
        walk_fields_v1(child, next, paths);
    }
}

/// The value at `path`, if every step is an object key.
pub fn lookup<'a>(object: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(object, |node, key| node.get(key))
}

/// Removes the field at `path`, then prunes maps the removal left empty (the applier owned
/// the container only through this field).
pub fn remove_path(object: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let Some(parent) = parents.iter().try_fold(&mut *object, |node, key| node.get_mut(key)) else {
        return;
    };
    let Some(map) = parent.as_object_mut() else {
        return;
    };
    map.remove(last);
    if !parents.is_empty() && map.is_empty() {
        remove_path(object, parents);
    }
}

/// Whether two field paths overlap (one equals or contains the other).
pub fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// `.spec.replicas`, the way conflict messages name fields.
pub fn display_path(path: &[String]) -> String {
    path.iter().map(|segment| format!(".{segment}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_v1_round_trips_leaf_paths() {
        let applied = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "web", "labels": { "app": "web" } },
            "spec": { "replicas": 2, "template": { "spec": { "containers": [{ "name": "c" }] } } },
            "status": { "replicas": 1 }
        });
        let paths = owned_paths(&applied, Target::Main, true);
        let rendered = to_fields_v1(&paths);
        assert_eq!(
            rendered,
            json!({
                "f:metadata": { "f:labels": { "f:app": {} } },
                "f:spec": { "f:replicas": {}, "f:template": { "f:spec": { "f:containers": {} } } }
            })
        );
        assert_eq!(from_fields_v1(&rendered), paths);
        let status_only = owned_paths(&applied, Target::Status, true);
        assert_eq!(status_only.into_iter().collect::<Vec<_>>(), vec![vec!["status".to_owned(), "replicas".to_owned()]]);
    }

    #[test]
    fn removing_a_path_prunes_emptied_maps() {
        let mut object = json!({ "spec": { "a": { "b": 1 }, "c": 2 } });
        remove_path(&mut object, &["spec".to_owned(), "a".to_owned(), "b".to_owned()]);
        assert_eq!(object, json!({ "spec": { "c": 2 } }));
    }
}
