//! Object storage and write semantics.
//!
//! Owns everything a real API server keeps in etcd and enforces on writes: the objects, the
//! global `resourceVersion` counter, a bounded history of watch events (older versions answer
//! `410 Gone`), and the rules of create, replace, patch, server-side apply and delete —
//! optimistic concurrency, status-subresource isolation, `generation` bumps, finalizers,
//! owner-reference garbage collection and namespace cleanup. HTTP concerns live in `routes`.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::apply::{self, FieldPath, Target};
use crate::error::ApiError;
use crate::resources::{Registry, ResourceType, resource_type_from_crd};
use crate::selector::Selectors;

/// Where an object lives. The version is not part of the key: like the real server, one object
/// is stored once and shown in whichever served version the request names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    group: String,
    plural: String,
    namespace: String,
    name: String,
}

impl ObjectKey {
    fn new(resource: &ResourceType, namespace: Option<&str>, name: &str) -> Self {
        Self {
            group: resource.group.clone(),
            plural: resource.plural.clone(),
            namespace: if resource.namespaced { namespace.unwrap_or_default().to_owned() } else { String::new() },
            name: name.to_owned(),
        }
    }
}

/// The kind of change a watch event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// The object was created (or started matching a selector).
    Added,
    /// The object changed.
    Modified,
    /// The object was removed (or stopped matching a selector).
    Deleted,
}

impl EventType {
    /// The wire name (`ADDED`, `MODIFIED`, `DELETED`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change, kept in the history and fanned out to watches.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// The `resourceVersion` the change was committed at.
    pub resource_version: u64,
    /// What happened.
    pub event_type: EventType,
    /// API group of the object.
    pub group: String,
    /// Resource plural of the object.
    pub plural: String,
    /// Namespace of the object (empty when cluster-scoped).
    pub namespace: String,
    /// The object after the change (for deletions: as it was when removed).
    pub object: Value,
    /// The object before the change, so selector watches can tell "stopped matching" apart.
    pub previous: Option<Value>,
}

/// How a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchStart {
    /// `resourceVersion` unset or `0`, or `sendInitialEvents=true`: synthetic `ADDED` events for
    /// the current objects, then live changes.
    CurrentState,
    /// Changes committed after this `resourceVersion`.
    After(u64),
}

/// What a new watch receives: backlog first, then the live feed.
#[derive(Debug)]
pub struct WatchFeed {
    /// Events to send before live ones (synthetic `ADDED`s or replayed history).
    pub backlog: Vec<Arc<StoredEvent>>,
    /// Live changes, subscribed under the same lock that produced the backlog so none is lost.
    pub live: broadcast::Receiver<Arc<StoredEvent>>,
    /// The `resourceVersion` the watch is known to be current at.
    pub resource_version: u64,
}

/// One page of a list.
#[derive(Debug)]
pub struct ListPage {
    /// Matching objects in key order (namespace, then name).
    pub items: Vec<Value>,
    /// The list's `metadata.resourceVersion`.
    pub resource_version: u64,
    /// `metadata.continue` when `limit` cut the page short.
    pub continue_token: Option<String>,
    /// `metadata.remainingItemCount` when `limit` cut the page short.
    pub remaining: usize,
}

/// How the body of a non-apply PATCH is interpreted.
#[derive(Debug, Clone)]
pub enum PatchBody {
    /// RFC 7386 JSON merge patch (`application/merge-patch+json`), also used for strategic merge
    /// patches: lists are replaced whole rather than merged by their patch-merge keys.
    Merge(Value),
    /// RFC 6902 JSON patch (`application/json-patch+json`).
    Json(json_patch::Patch),
}

/// `propagationPolicy` of a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    /// Dependents are garbage-collected once the owner is gone (the default).
    #[default]
    Background,
    /// Treated like `Background`: dependents go right after the owner, not before it.
    Foreground,
    /// Dependents lose their owner reference and stay.
    Orphan,
}

/// The parts of `DeleteOptions` the server honours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
    /// `propagationPolicy`.
    pub propagation: Propagation,
}

/// The outcome of a delete.
#[derive(Debug)]
pub enum Deletion {
    /// Finalizers keep the object; it now carries `deletionTimestamp`.
    Pending(Value),
    /// The object is gone; this is how it looked when removed.
    Removed(Value),
}

/// Server-side apply request parameters.
#[derive(Debug, Clone, Copy)]
pub struct ApplyRequest<'a> {
    /// `fieldManager` query parameter.
    pub manager: &'a str,
    /// `force=true`: take over conflicting fields instead of failing.
    pub force: bool,
    /// Main resource or `/status`.
    pub target: Target,
    /// `dryRun=All`.
    pub dry_run: bool,
}

/// Everything the server stores.
#[derive(Debug)]
pub struct Store {
    registry: Registry,
    objects: BTreeMap<ObjectKey, Value>,
    resource_version: u64,
    history: VecDeque<Arc<StoredEvent>>,
    history_limit: usize,
    /// Events at or below this version were dropped; watches starting earlier get 410.
    compacted_through: u64,
    events: broadcast::Sender<Arc<StoredEvent>>,
    random: RandomState,
    random_counter: u64,
}

/// How many live events a slow watch may fall behind before it is ended with 410, like a
/// watch cache that cannot keep up.
const LIVE_EVENT_BUFFER: usize = 4096;

impl Store {
    /// An empty store with the built-in types and `history_limit` retained events.
    pub fn new(history_limit: usize) -> Self {
        Self {
            registry: Registry::with_builtins(),
            objects: BTreeMap::new(),
            resource_version: 1,
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted_through: 0,
            events: broadcast::channel(LIVE_EVENT_BUFFER).0,
            random: RandomState::new(),
            random_counter: 0,
        }
    }

    /// The served types.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Serves `resource` from now on.
    pub fn register(&mut self, resource: ResourceType) {
        self.registry.register(resource);
    }

    /// The type at `group`/`version`/`plural`, or the real server's 404.
    pub fn resource_type(&self, group: &str, version: &str, plural: &str) -> Result<ResourceType, ApiError> {
        self.registry.lookup(group, version, plural).cloned().ok_or_else(ApiError::unknown_resource)
    }

    /// The latest committed `resourceVersion`.
    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }

    /// Drops the whole event history, as etcd compaction does: any watch or continue token
    /// older than now gets `410 Gone`.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted_through = self.resource_version;
    }

    /// Expires every version handed out so far, as a restarted API server with a freshly
    /// compacted etcd would: the counter moves on, so a new list is current, while watches
    /// and continue tokens from any earlier version get `410 Gone`.
    pub fn expire_versions(&mut self) {
        self.resource_version += 1;
        self.compact();
    }

    /// Stored objects of `group`/`plural`, in key order, as stored (storage version).
    pub fn objects(&self, group: &str, plural: &str) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|(key, _)| key.group == group && key.plural == plural)
            .map(|(_, object)| object.clone())
            .collect()
    }

    /// One stored object, as stored.
    pub fn object(&self, group: &str, plural: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let key = ObjectKey {
            group: group.to_owned(),
            plural: plural.to_owned(),
            namespace: namespace.unwrap_or_default().to_owned(),
            name: name.to_owned(),
        };
        self.objects.get(&key).cloned()
    }

    /// GET of one object.
    pub fn get(
        &self,
        resource: &ResourceType,
        version: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let key = ObjectKey::new(resource, namespace, name);
        let object = self.objects.get(&key).ok_or_else(|| ApiError::not_found(resource, name))?;
        Ok(present(object.clone(), resource, version))
    }

    /// LIST, optionally across namespaces, filtered and paginated. A continue token pins the
    /// list's `resourceVersion` to the first page's, so a watch started from the last page
    /// replays whatever changed while paging.
    pub fn list(
        &self,
        resource: &ResourceType,
        version: &str,
        namespace: Option<&str>,
        selectors: &Selectors,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<ListPage, ApiError> {
        let (resource_version, after) = match continue_token {
            None => (self.resource_version, None),
            Some(token) => {
                let invalid = || ApiError::bad_request(format!("continue key is not valid: {token:?}"));
                let mut parts = token.splitn(3, '/');
                let version_part = parts.next().and_then(|v| v.parse::<u64>().ok()).ok_or_else(invalid)?;
                let namespace_part = parts.next().ok_or_else(invalid)?;
                let name_part = parts.next().ok_or_else(invalid)?;
                if version_part < self.compacted_through {
                    return Err(ApiError::gone(version_part, self.compacted_through + 1));
                }
                (version_part, Some((namespace_part.to_owned(), name_part.to_owned())))
            }
        };
        let matching: Vec<(&ObjectKey, &Value)> = self
            .objects
            .iter()
            .filter(|(key, _)| key.group == resource.group && key.plural == resource.plural)
            .filter(|(key, _)| namespace.is_none_or(|ns| key.namespace == ns))
            .filter(|(key, _)| after.as_ref().is_none_or(|(ns, name)| (&key.namespace, &key.name) > (ns, name)))
            .filter(|(_, object)| selectors.matches(object))
            .collect();
        let page_size = limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let remaining = matching.len().saturating_sub(page_size);
        let continue_token = (remaining > 0)
            .then(|| matching.get(page_size.saturating_sub(1)))
            .flatten()
            .map(|(key, _)| format!("{resource_version}/{}/{}", key.namespace, key.name));
        let items = matching
            .into_iter()
            .take(page_size)
            .map(|(_, object)| present(object.clone(), resource, version))
            .collect();
        Ok(ListPage { items, resource_version, continue_token, remaining })
    }

    /// POST: creates an object, assigning `uid`, `creationTimestamp`, `resourceVersion`,
    /// `generation` and a name from `generateName`.
    pub fn create(
        &mut self,
        resource: &ResourceType,
        version: &str,
        namespace: Option<&str>,
        mut body: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        check_type_meta(&body, resource, version)?;
        let metadata = metadata_mut(&mut body)?;
        let name = match metadata.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) {
            Some(name) => name.to_owned(),
            None => match metadata.get("generateName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
                Some(prefix) => prefix.to_owned(),
                None => {
                    return Err(ApiError::invalid("metadata.name: Required value: name or generateName is required"));
                }
            },
        };
        let generated = metadata.get("name").and_then(Value::as_str).is_none_or(str::is_empty);
        check_namespace(metadata, resource, namespace)?;
        let name = if generated { self.generate_name(resource, namespace, &name) } else { name };
        validate_name(&name)?;
        let key = ObjectKey::new(resource, namespace, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(resource, &name));
        }
        let uid = self.random_uid();
        let metadata = metadata_mut(&mut body)?;
        metadata.insert("name".to_owned(), json!(name));
        for server_owned in ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"] {
            metadata.remove(server_owned);
        }
        metadata.insert("uid".to_owned(), json!(uid));
        metadata.insert("creationTimestamp".to_owned(), json!(now_timestamp()));
        metadata.insert("generation".to_owned(), json!(1));
        set_storage_type_meta(&mut body, resource);
        if let Some(object) = body.as_object_mut() {
            if resource.status_subresource {
                object.remove("status");
            }
            if resource.group.is_empty() && resource.plural == "namespaces" {
                object.insert("status".to_owned(), json!({ "phase": "Active" }));
            }
        }
        if resource.is_crd_resource() {
            let registered = resource_type_from_crd(&body).map_err(|e| ApiError::invalid(e.to_string()))?;
            let status = established_crd_status(&body);
            if let Some(object) = body.as_object_mut() {
                object.insert("status".to_owned(), status);
            }
            if !dry_run {
                self.registry.register(registered);
            }
        }
        if dry_run {
            return Ok(present(body, resource, version));
        }
        let resource_version = self.next_resource_version();
        set_resource_version(&mut body, resource_version);
        self.objects.insert(key.clone(), body.clone());
        self.emit(&key, EventType::Added, body.clone(), None, resource_version);
        Ok(present(body, resource, version))
    }

    /// PUT on the object or its `/status`.
    #[allow(clippy::too_many_arguments)]
    pub fn replace(
        &mut self,
        resource: &ResourceType,
        version: &str,
        namespace: Option<&str>,
        name: &str,
        mut body: Value,
        target: Target,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        check_type_meta(&body, resource, version)?;
        let metadata = metadata_mut(&mut body)?;
        if let Some(body_name) = metadata.get("name").and_then(Value::as_str)
            && body_name != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        check_namespace(metadata, resource, namespace)?;
        let sent_version = metadata.get("resourceVersion").and_then(Value::as_str).filter(|v| !v.is_empty());
        if sent_version.is_none() && !resource.unconditional_update {
            return Err(ApiError::invalid(format!(
                "{} \"{name}\" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
                resource.kind
            )));
        }
        let key = ObjectKey::new(resource, namespace, name);
        let old = self.objects.get(&key).cloned().ok_or_else(|| ApiError::not_found(resource, name))?;
        if let Some(sent) = sent_version
            && Some(sent) != resource_version_of(&old)
        {
            return Err(ApiError::conflict_modified(resource, name));
        }
        self.commit_update(resource, version, key, old, body, target, dry_run)
    }

    /// PATCH with a merge, strategic-merge or JSON patch. A `metadata.resourceVersion` in the
    /// patched result acts as a precondition, as on the real server.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        resource: &ResourceType,
        version: &str,
        namespace: Option<&str>,
        name: &str,
        patch: &PatchBody,
        target: Target,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let key = ObjectKey::new(resource, namespace, name);
        let old = self.objects.get(&key).cloned().ok_or_else(|| ApiError::not_found(resource, name))?;
        let mut patched = present(old.clone(), resource, version);
        match patch {
            PatchBody::Merge(merge) => {
                if !merge.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                json_patch::merge(&mut patched, merge);
            }
            PatchBody::Json(operations) => {
                json_patch::patch(&mut patched, &operations.0).map_err(|e| {
                    ApiError::invalid(format!("the server rejected our request due to an error in our request: {e}"))
                })?;
            }
        }
        if resource_version_of(&patched) != resource_version_of(&old) {
            return Err(ApiError::conflict_modified(resource, name));
        }
        self.commit_update(resource, version, key, old, patched, target, dry_run)
    }

    /// Server-side apply: creates the object when missing, otherwise merges the applied
    /// configuration, drops fields this manager owned before and no longer sends (unless
    /// another manager owns them too), and records ownership in `metadata.managedFields`.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        resource: &ResourceType,
        version: &str,
        namespace: Option<&str>,
        name: &str,
        mut applied: Value,
        request: ApplyRequest<'_>,
    ) -> Result<Value, ApiError> {
        check_type_meta(&applied, resource, version)?;
        for field in ["apiVersion", "kind"] {
            if applied.get(field).is_none() {
                return Err(ApiError::bad_request(format!("{field} must be set in an apply patch")));
            }
        }
        let metadata = metadata_mut(&mut applied)?;
        if let Some(applied_name) = metadata.get("name").and_then(Value::as_str)
            && applied_name != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({applied_name}) does not match the name on the URL ({name})"
            )));
        }
        check_namespace(metadata, resource, namespace)?;
        metadata.remove("managedFields");
        let api_version = resource.api_version(version);
        let new_paths = apply::owned_paths(&applied, request.target, resource.status_subresource);
        let key = ObjectKey::new(resource, namespace, name);
        let Some(old) = self.objects.get(&key).cloned() else {
            if request.target == Target::Status {
                return Err(ApiError::not_found(resource, name));
            }
            let entry = managed_entry(request.manager, &api_version, request.target, &new_paths, now_timestamp());
            let metadata = metadata_mut(&mut applied)?;
            metadata.insert("name".to_owned(), json!(name));
            metadata.insert("managedFields".to_owned(), json!([entry]));
            return self.create(resource, version, namespace, applied, request.dry_run);
        };
        if let Some(sent) = applied.pointer("/metadata/resourceVersion").and_then(Value::as_str)
            && Some(sent) != resource_version_of(&old)
        {
            return Err(ApiError::conflict_modified(resource, name));
        }
        let mut entries = read_managed_fields(&old);
        let is_mine = |entry: &ManagedEntry| {
            entry.manager == request.manager
                && entry.operation == "Apply"
                && entry.subresource == request.target.subresource()
        };
        let mut conflicts = Vec::new();
        for entry in entries.iter().filter(|e| !is_mine(e)) {
            for path in &new_paths {
                let contested = entry.fields.iter().any(|owned| apply::overlaps(owned, path));
                if contested && apply::lookup(&old, path) != apply::lookup(&applied, path) {
                    conflicts.push((entry.manager.clone(), entry.api_version.clone(), apply::display_path(path)));
                }
            }
        }
        if !conflicts.is_empty() {
            if !request.force {
                return Err(ApiError::apply_conflict(&conflicts));
            }
            for entry in entries.iter_mut().filter(|e| !is_mine(e)) {
                entry.fields.retain(|owned| {
                    !new_paths.iter().any(|path| {
                        apply::overlaps(owned, path) && apply::lookup(&old, path) != apply::lookup(&applied, path)
                    })
                });
            }
        }
        let previous_mine = entries.iter().find(|e| is_mine(e)).cloned();
        let mut merged = present(old.clone(), resource, version);
        if let Some(previous) = &previous_mine {
            for dropped in previous.fields.difference(&new_paths) {
                let shared = entries
                    .iter()
                    .filter(|e| !is_mine(e))
                    .any(|e| e.fields.iter().any(|owned| apply::overlaps(owned, dropped)));
                if !shared {
                    apply::remove_path(&mut merged, dropped);
                }
            }
        }
        json_patch::merge(&mut merged, &applied);
        let time = match &previous_mine {
            Some(previous) if previous.fields == new_paths => previous.time.clone(),
            _ => now_timestamp(),
        };
        entries.retain(|e| !is_mine(e) && !e.fields.is_empty());
        let mut rendered: Vec<Value> = entries.iter().map(ManagedEntry::to_json).collect();
        if !new_paths.is_empty() {
            let mine = managed_entry(request.manager, &api_version, request.target, &new_paths, time);
            let position = previous_mine.as_ref().map_or(rendered.len(), |p| p.position.min(rendered.len()));
            rendered.insert(position, mine);
        }
        metadata_mut(&mut merged)?.insert("managedFields".to_owned(), Value::Array(rendered));
        self.commit_update(resource, version, key, old, merged, request.target, request.dry_run)
    }

    /// DELETE: honours preconditions, finalizers (`deletionTimestamp` and keep) and
    /// propagation; removal garbage-collects dependents.
    pub fn delete(
        &mut self,
        resource: &ResourceType,
        version: &str,
        namespace: Option<&str>,
        name: &str,
        options: &DeleteOptions,
        dry_run: bool,
    ) -> Result<Deletion, ApiError> {
        let key = ObjectKey::new(resource, namespace, name);
        let old = self.objects.get(&key).cloned().ok_or_else(|| ApiError::not_found(resource, name))?;
        let uid = old.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_owned();
        if let Some(wanted) = &options.uid
            && *wanted != uid
        {
            return Err(ApiError::conflict(
                resource,
                name,
                &format!("Precondition failed: UID in precondition: {wanted}, UID in object meta: {uid}"),
            ));
        }
        let current = resource_version_of(&old).unwrap_or_default().to_owned();
        if let Some(wanted) = &options.resource_version
            && *wanted != current
        {
            return Err(ApiError::conflict(
                resource,
                name,
                &format!(
                    "Precondition failed: the ResourceVersion in the precondition ({wanted}) does not match the ResourceVersion in record ({current}). The object might have been modified"
                ),
            ));
        }
        if dry_run {
            return Ok(if has_finalizers(&old) {
                Deletion::Pending(present(old, resource, version))
            } else {
                Deletion::Removed(present(old, resource, version))
            });
        }
        if options.propagation == Propagation::Orphan {
            self.orphan_dependents(&uid);
        }
        Ok(match self.delete_stored(&key) {
            Some(pending) => Deletion::Pending(present(pending, resource, version)),
            None => Deletion::Removed(present(old, resource, version)),
        })
    }

    /// Opens a watch on the whole store; `http` filters by resource, namespace and selectors.
    pub fn open_watch(
        &self,
        start: WatchStart,
        resource: &ResourceType,
        namespace: Option<&str>,
    ) -> Result<WatchFeed, ApiError> {
        let live = self.events.subscribe();
        let backlog = match start {
            WatchStart::CurrentState => self
                .objects
                .iter()
                .filter(|(key, _)| key.group == resource.group && key.plural == resource.plural)
                .filter(|(key, _)| namespace.is_none_or(|ns| key.namespace == ns))
                .map(|(key, object)| {
                    Arc::new(StoredEvent {
                        resource_version: resource_version_of(object).and_then(|v| v.parse().ok()).unwrap_or_default(),
                        event_type: EventType::Added,
                        group: key.group.clone(),
                        plural: key.plural.clone(),
                        namespace: key.namespace.clone(),
                        object: object.clone(),
                        previous: None,
                    })
                })
                .collect(),
            WatchStart::After(since) => {
                if since < self.compacted_through {
                    return Err(ApiError::gone(since, self.compacted_through + 1));
                }
                self.history.iter().filter(|event| event.resource_version > since).cloned().collect()
            }
        };
        let resource_version = match start {
            WatchStart::CurrentState => self.resource_version,
            WatchStart::After(since) => since,
        };
        Ok(WatchFeed { backlog, live, resource_version })
    }

    /// The shared update path of PUT, PATCH and apply: keeps server-owned metadata, isolates
    /// `.status` per the subresource rules, skips no-op writes (no new `resourceVersion`, no
    /// event), bumps `generation` when anything outside `metadata`/`status` changed, and
    /// removes the object once a pending deletion has no finalizers left.
    #[allow(clippy::too_many_arguments)]
    fn commit_update(
        &mut self,
        resource: &ResourceType,
        version: &str,
        key: ObjectKey,
        old: Value,
        candidate: Value,
        target: Target,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let mut next = match target {
            Target::Main => {
                let mut next = candidate;
                if resource.status_subresource {
                    set_field(&mut next, "status", old.get("status").cloned());
                }
                next
            }
            Target::Status => {
                let mut next = old.clone();
                set_field(&mut next, "status", candidate.get("status").cloned());
                if let Some(managed) = candidate.pointer("/metadata/managedFields") {
                    metadata_mut(&mut next)?.insert("managedFields".to_owned(), managed.clone());
                }
                next
            }
        };
        set_storage_type_meta(&mut next, resource);
        let old_metadata = old.get("metadata").and_then(Value::as_object).cloned().unwrap_or_default();
        let metadata = metadata_mut(&mut next)?;
        for server_owned in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "resourceVersion",
        ] {
            match old_metadata.get(server_owned) {
                Some(value) => metadata.insert(server_owned.to_owned(), value.clone()),
                None => metadata.remove(server_owned),
            };
        }
        if !metadata.contains_key("managedFields")
            && let Some(managed) = old_metadata.get("managedFields")
        {
            metadata.insert("managedFields".to_owned(), managed.clone());
        }
        if next == old {
            return Ok(present(old, resource, version));
        }
        if without_metadata_and_status(&next) != without_metadata_and_status(&old) {
            let generation = old_metadata.get("generation").and_then(Value::as_i64).unwrap_or(0) + 1;
            metadata_mut(&mut next)?.insert("generation".to_owned(), json!(generation));
        }
        if resource.is_crd_resource() {
            let registered = resource_type_from_crd(&next).map_err(|e| ApiError::invalid(e.to_string()))?;
            if !dry_run {
                self.registry.register(registered);
            }
        }
        if dry_run {
            return Ok(present(next, resource, version));
        }
        let resource_version = self.next_resource_version();
        set_resource_version(&mut next, resource_version);
        if next.pointer("/metadata/deletionTimestamp").is_some() && !has_finalizers(&next) {
            self.remove_stored(&key, next.clone(), resource_version);
        } else {
            self.objects.insert(key.clone(), next.clone());
            self.emit(&key, EventType::Modified, next.clone(), Some(old), resource_version);
        }
        Ok(present(next, resource, version))
    }

    /// Deletes a stored object: marks it when finalizers hold it (returning it), otherwise
    /// removes it and collects its garbage (returning `None`).
    fn delete_stored(&mut self, key: &ObjectKey) -> Option<Value> {
        let old = self.objects.get(key).cloned()?;
        if has_finalizers(&old) {
            if old.pointer("/metadata/deletionTimestamp").is_some() {
                return Some(old);
            }
            let mut marked = old.clone();
            if let Some(metadata) = marked.get_mut("metadata").and_then(Value::as_object_mut) {
                metadata.insert("deletionTimestamp".to_owned(), json!(now_timestamp()));
                metadata.insert("deletionGracePeriodSeconds".to_owned(), json!(0));
                // Like the real server's markAsDeleting, so generation-filtered controllers
                // notice the pending deletion.
                if let Some(generation) = metadata.get("generation").and_then(Value::as_i64) {
                    metadata.insert("generation".to_owned(), json!(generation + 1));
                }
            }
            let resource_version = self.next_resource_version();
            set_resource_version(&mut marked, resource_version);
            self.objects.insert(key.clone(), marked.clone());
            self.emit(key, EventType::Modified, marked.clone(), Some(old), resource_version);
            return Some(marked);
        }
        let resource_version = self.next_resource_version();
        let mut removed = old;
        set_resource_version(&mut removed, resource_version);
        self.remove_stored(key, removed, resource_version);
        None
    }

    /// Removes an object for good, announces it, then deletes what depended on it: the
    /// instances of a removed CRD (which stops being served), namespace contents, and
    /// dependents whose owners are now all gone (recursively, through `delete_stored`).
    fn remove_stored(&mut self, key: &ObjectKey, removed: Value, resource_version: u64) {
        let uid = removed.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_owned();
        self.objects.remove(key);
        let removed_definition = removed.clone();
        self.emit(key, EventType::Deleted, removed, None, resource_version);
        if key.group == "apiextensions.k8s.io"
            && key.plural == "customresourcedefinitions"
            && let Ok(served) = resource_type_from_crd(&removed_definition)
        {
            let instances: Vec<ObjectKey> =
                self.objects.keys().filter(|k| k.group == served.group && k.plural == served.plural).cloned().collect();
            for instance in instances {
                if let Some(mut object) = self.objects.remove(&instance) {
                    let resource_version = self.next_resource_version();
                    set_resource_version(&mut object, resource_version);
                    self.emit(&instance, EventType::Deleted, object, None, resource_version);
                }
            }
            self.registry.unregister(&served.group, &served.plural);
        }
        if key.group.is_empty() && key.plural == "namespaces" {
            let contents: Vec<ObjectKey> = self.objects.keys().filter(|k| k.namespace == key.name).cloned().collect();
            for content in contents {
                self.delete_stored(&content);
            }
        }
        let live: HashSet<String> = self
            .objects
            .values()
            .filter_map(|o| o.pointer("/metadata/uid").and_then(Value::as_str).map(str::to_owned))
            .collect();
        let orphaned: Vec<ObjectKey> = self
            .objects
            .iter()
            .filter(|(_, object)| {
                let owners = owner_uids(object);
                owners.contains(&uid) && owners.iter().all(|owner| !live.contains(owner))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for dependent in orphaned {
            self.delete_stored(&dependent);
        }
    }

    /// Strips owner references to `owner_uid`, as the orphan finalizer does.
    fn orphan_dependents(&mut self, owner_uid: &str) {
        let dependents: Vec<ObjectKey> = self
            .objects
            .iter()
            .filter(|(_, object)| owner_uids(object).iter().any(|u| u == owner_uid))
            .map(|(k, _)| k.clone())
            .collect();
        for key in dependents {
            let Some(old) = self.objects.get(&key).cloned() else {
                continue;
            };
            let mut next = old.clone();
            if let Some(references) = next.pointer_mut("/metadata/ownerReferences").and_then(Value::as_array_mut) {
                references.retain(|r| r.get("uid").and_then(Value::as_str) != Some(owner_uid));
            }
            let resource_version = self.next_resource_version();
            set_resource_version(&mut next, resource_version);
            self.objects.insert(key.clone(), next.clone());
            self.emit(&key, EventType::Modified, next, Some(old), resource_version);
        }
    }

    fn next_resource_version(&mut self) -> u64 {
        self.resource_version += 1;
        self.resource_version
    }

    fn emit(
        &mut self,
        key: &ObjectKey,
        event_type: EventType,
        object: Value,
        previous: Option<Value>,
        resource_version: u64,
    ) {
        let event = Arc::new(StoredEvent {
            resource_version,
            event_type,
            group: key.group.clone(),
            plural: key.plural.clone(),
            namespace: key.namespace.clone(),
            object,
            previous,
        });
        self.history.push_back(Arc::clone(&event));
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted_through = dropped.resource_version;
            }
        }
        // No receivers just means nobody is watching.
        let _ = self.events.send(event);
    }

    fn random_u64(&mut self) -> u64 {
        self.random_counter += 1;
        self.random.hash_one(self.random_counter)
    }

    fn random_uid(&mut self) -> String {
        let (high, low) = (self.random_u64(), self.random_u64());
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            high >> 32,
            (high >> 16) & 0xffff,
            high & 0x0fff,
            0x8000 | (low >> 48) & 0x3fff,
            low & 0xffff_ffff_ffff
        )
    }

    /// `generateName` plus five characters from the real server's alphabet, retried on
    /// collision.
    fn generate_name(&mut self, resource: &ResourceType, namespace: Option<&str>, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        loop {
            let mut random = self.random_u64();
            let mut name = prefix.to_owned();
            for _ in 0..5 {
                name.push(char::from(ALPHABET[(random % ALPHABET.len() as u64) as usize]));
                random /= ALPHABET.len() as u64;
            }
            if !self.objects.contains_key(&ObjectKey::new(resource, namespace, &name)) {
                return name;
            }
        }
    }
}

/// One `metadata.managedFields` entry, read back for apply.
#[derive(Debug, Clone)]
struct ManagedEntry {
    manager: String,
    operation: String,
    subresource: String,
    api_version: String,
    time: String,
    fields: BTreeSet<FieldPath>,
    /// Position in the list, so re-applies keep the order stable.
    position: usize,
    raw: Value,
}

impl ManagedEntry {
    fn to_json(&self) -> Value {
        let mut raw = self.raw.clone();
        if let Some(entry) = raw.as_object_mut() {
            entry.insert("fieldsV1".to_owned(), apply::to_fields_v1(&self.fields));
        }
        raw
    }
}

fn read_managed_fields(object: &Value) -> Vec<ManagedEntry> {
    let text = |entry: &Value, field: &str| entry.get(field).and_then(Value::as_str).unwrap_or_default().to_owned();
    object
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .enumerate()
                .map(|(position, entry)| ManagedEntry {
                    manager: text(entry, "manager"),
                    operation: text(entry, "operation"),
                    subresource: text(entry, "subresource"),
                    api_version: text(entry, "apiVersion"),
                    time: text(entry, "time"),
                    fields: entry.get("fieldsV1").map(apply::from_fields_v1).unwrap_or_default(),
                    position,
                    raw: entry.clone(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn managed_entry(manager: &str, api_version: &str, target: Target, paths: &BTreeSet<FieldPath>, time: String) -> Value {
    let mut entry = json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": api_version,
        "time": time,
        "fieldsType": "FieldsV1",
        "fieldsV1": apply::to_fields_v1(paths),
    });
    if target == Target::Status
        && let Some(fields) = entry.as_object_mut()
    {
        fields.insert("subresource".to_owned(), json!("status"));
    }
    entry
}

/// Rewrites `apiVersion` to the version the request asked for; stored objects carry the
/// storage version.
fn present(mut object: Value, resource: &ResourceType, version: &str) -> Value {
    if let Some(fields) = object.as_object_mut() {
        fields.insert("apiVersion".to_owned(), json!(resource.api_version(version)));
        fields.insert("kind".to_owned(), json!(resource.kind));
    }
    object
}

fn set_storage_type_meta(object: &mut Value, resource: &ResourceType) {
    let storage_version = resource.versions.first().map(String::as_str).unwrap_or("v1");
    *object = present(std::mem::take(object), resource, storage_version);
}

/// A body's `apiVersion`/`kind`, when present, must name the resource of the path.
fn check_type_meta(body: &Value, resource: &ResourceType, version: &str) -> Result<(), ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request("the body of the request must be a JSON object"));
    }
    if let Some(api_version) = body.get("apiVersion").and_then(Value::as_str)
        && api_version != resource.api_version(version)
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            resource.api_version(version)
        )));
    }
    if let Some(kind) = body.get("kind").and_then(Value::as_str)
        && kind != resource.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            resource.kind
        )));
    }
    Ok(())
}

/// Checks the body's namespace against the path's and fills it in (or drops it for
/// cluster-scoped resources).
fn check_namespace(
    metadata: &mut Map<String, Value>,
    resource: &ResourceType,
    namespace: Option<&str>,
) -> Result<(), ApiError> {
    if !resource.namespaced {
        metadata.remove("namespace");
        return Ok(());
    }
    let path_namespace = namespace.unwrap_or_default();
    if let Some(body_namespace) = metadata.get("namespace").and_then(Value::as_str)
        && !body_namespace.is_empty()
        && body_namespace != path_namespace
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    metadata.insert("namespace".to_owned(), json!(path_namespace));
    Ok(())
}

/// DNS-1123 subdomain rules, which most resource names follow, as the API
/// server checks them (`IsDNS1123Subdomain`): at most 253 characters and the
/// pattern, but no limit on each dot-separated part, so a 70-character name
/// without dots is accepted.
fn validate_name(name: &str) -> Result<(), ApiError> {
    let alphanumeric = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let part = |p: &str| {
        alphanumeric(p.bytes().next())
            && alphanumeric(p.bytes().last())
            && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if name.len() <= reco_contracts::names::MAX_SUBDOMAIN && name.split('.').all(part) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        )))
    }
}

fn metadata_mut(object: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let fields =
        object.as_object_mut().ok_or_else(|| ApiError::bad_request("the body of the request must be a JSON object"))?;
    fields
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be a JSON object"))
}

fn set_field(object: &mut Value, field: &str, value: Option<Value>) {
    if let Some(fields) = object.as_object_mut() {
        match value {
            Some(value) => fields.insert(field.to_owned(), value),
            None => fields.remove(field),
        };
    }
}

fn set_resource_version(object: &mut Value, resource_version: u64) {
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.insert("resourceVersion".to_owned(), json!(resource_version.to_string()));
    }
}

fn resource_version_of(object: &Value) -> Option<&str> {
    object.pointer("/metadata/resourceVersion").and_then(Value::as_str)
}

fn has_finalizers(object: &Value) -> bool {
    object.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty())
}

fn owner_uids(object: &Value) -> Vec<String> {
    object
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| refs.iter().filter_map(|r| r.get("uid").and_then(Value::as_str).map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// The part of an object whose change bumps `generation`.
fn without_metadata_and_status(object: &Value) -> Value {
    let mut rest = object.clone();
    if let Some(fields) = rest.as_object_mut() {
        fields.remove("metadata");
        fields.remove("status");
    }
    rest
}

fn established_crd_status(crd: &Value) -> Value {
    let now = now_timestamp();
    let condition = |kind: &str, reason: &str| json!({ "type": kind, "status": "True", "reason": reason, "message": "", "lastTransitionTime": now });
    json!({
        "conditions": [condition("NamesAccepted", "NoConflicts"), condition("Established", "InitialNamesAccepted")],
        "acceptedNames": crd.pointer("/spec/names").cloned().unwrap_or_else(|| json!({})),
        "storedVersions": crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .map(|versions| versions
                .iter()
                .filter(|v| v.get("storage").and_then(Value::as_bool).unwrap_or(false))
                .filter_map(|v| v.get("name").cloned())
                .collect::<Vec<_>>())
            .unwrap_or_default(),
    })
}

/// RFC 3339 at second precision, the format of `metav1.Time`.
fn now_timestamp() -> String {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second()).unwrap_or(now).to_string()
}
