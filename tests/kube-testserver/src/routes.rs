//! The HTTP face of the server.
//!
//! Owns turning requests into store operations and store results into responses: path parsing
//! (`/api/v1/...`, `/apis/{group}/{version}/...`, namespaced, all-namespaces, `/status`), query
//! parameters, content types, status codes, watch streaming (history replay, bookmarks,
//! timeouts, selector transitions, forced closes) and minimal discovery. Every request is
//! logged and checked against injected faults before anything else happens.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use futures::channel::mpsc;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

use crate::apply::Target;
use crate::error::ApiError;
use crate::faults::{RecordedRequest, Traffic};
use crate::resources::ResourceType;
use crate::selector::{FieldSelector, LabelSelector, Selectors};
use crate::store::{
    ApplyRequest, DeleteOptions, Deletion, EventType, PatchBody, Propagation, Store, StoredEvent, WatchStart,
};

/// State shared by the request handlers and the [`crate::TestApiServer`] handle.
#[derive(Debug)]
pub struct Shared {
    /// Objects, types and events.
    pub store: Mutex<Store>,
    /// Request log and fault rules.
    pub traffic: Mutex<Traffic>,
    /// Bumped to end every open watch (an API server restart, as controllers see it).
    pub watch_epoch: watch::Sender<u64>,
    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK.
    pub bookmark_interval: Duration,
}

/// Locks a mutex, ignoring poisoning: a panicking test thread must not wedge the server.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The router: one fallback handler that parses Kubernetes paths itself.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

/// The server's default watch length when `timeoutSeconds` is absent or zero (the real
/// server picks 30–60 minutes).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let path_and_query = uri.path_and_query().map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned());
    tracing::debug!(%method, %path_and_query, ?content_type, "test API server request");
    let injected = lock(&shared.traffic).record(RecordedRequest {
        method: method.as_str().to_owned(),
        path_and_query,
        content_type: content_type.clone(),
    });
    if let Some(code) = injected {
        return ApiError::injected(code).into_response();
    }
    let metadata_only = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|accept| accept.contains("as=PartialObjectMetadata"));
    let request =
        Request { method: &method, uri: &uri, content_type: content_type.as_deref(), metadata_only, body: &body };
    serve(&shared, &request).unwrap_or_else(IntoResponse::into_response)
}

struct Request<'a> {
    method: &'a Method,
    uri: &'a Uri,
    content_type: Option<&'a str>,
    /// `Accept: application/json;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1`, which
    /// kube-client sends for `Api<PartialObjectMeta<K>>`.
    metadata_only: bool,
    body: &'a Bytes,
}

/// An object reduced to what a metadata-only request receives.
fn partial_object_metadata(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// A parsed resource path.
#[derive(Debug)]
struct Route<'a> {
    group: &'a str,
    version: &'a str,
    namespace: Option<&'a str>,
    plural: &'a str,
    name: Option<&'a str>,
    subresource: Option<&'a str>,
}

/// What a path addresses.
#[derive(Debug)]
enum Path<'a> {
    /// `/api`.
    CoreVersions,
    /// `/apis`.
    Groups,
    /// `/api/v1` or `/apis/{group}/{version}`.
    Resources { group: &'a str, version: &'a str },
    /// Anything under a resource.
    Resource(Route<'a>),
}

fn parse_path(path: &str) -> Result<Path<'_>, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api"] => return Ok(Path::CoreVersions),
        ["apis"] => return Ok(Path::Groups),
        ["api", version] => return Ok(Path::Resources { group: "", version }),
        ["apis", group, version] => return Ok(Path::Resources { group, version }),
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::unknown_resource()),
    };
    // `/api/v1/namespaces/{name}/status` addresses a namespace, not a resource in it.
    let namespace_subresource = matches!(rest, ["namespaces", _, "status" | "finalize"]) && group.is_empty();
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() && !namespace_subresource => (Some(*namespace), rest),
        _ => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(*name), None),
        [plural, name, sub] => (*plural, Some(*name), Some(*sub)),
        _ => return Err(ApiError::unknown_resource()),
    };
    if [Some(plural), name, subresource].into_iter().flatten().any(str::is_empty) {
        return Err(ApiError::unknown_resource());
    }
    Ok(Path::Resource(Route { group, version, namespace, plural, name, subresource }))
}

fn serve(shared: &Shared, request: &Request<'_>) -> Result<Response, ApiError> {
    let route = match parse_path(request.uri.path())? {
        Path::CoreVersions => {
            return Ok(json_response(StatusCode::OK, &json!({ "kind": "APIVersions", "versions": ["v1"] })));
        }
        Path::Groups => {
            return Ok(json_response(StatusCode::OK, &api_groups(&lock(&shared.store))));
        }
        Path::Resources { group, version } => {
            return Ok(json_response(StatusCode::OK, &api_resources(&lock(&shared.store), group, version)?));
        }
        Path::Resource(route) => route,
    };
    let query: HashMap<String, String> = Query::<HashMap<String, String>>::try_from_uri(request.uri)
        .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?
        .0;
    let resource = lock(&shared.store).resource_type(route.group, route.version, route.plural)?;
    if route.namespace.is_some() && !resource.namespaced {
        return Err(ApiError::unknown_resource());
    }
    let target = match route.subresource {
        None => Target::Main,
        Some("status") if resource.status_subresource => Target::Status,
        Some(_) => return Err(ApiError::unknown_resource()),
    };
    let dry_run = query.get("dryRun").is_some_and(|d| d == "All");
    let version = route.version;
    let namespace = route.namespace;
    match (request.method, route.name) {
        (&Method::GET, None) => {
            let selectors = Selectors {
                labels: LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))?,
                fields: FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))?,
            };
            if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
                let filter = WatchFilter {
                    resource,
                    version: version.to_owned(),
                    namespace: namespace.map(str::to_owned),
                    selectors,
                    metadata_only: request.metadata_only,
                };
                return watch(shared, filter, &query);
            }
            let limit = match query.get("limit") {
                Some(limit) => Some(
                    limit.parse::<usize>().map_err(|_| ApiError::bad_request(format!("invalid limit {limit:?}")))?,
                ),
                None => None,
            };
            let page = lock(&shared.store).list(
                &resource,
                version,
                namespace,
                &selectors,
                limit,
                query.get("continue").map(String::as_str).filter(|c| !c.is_empty()),
            )?;
            let mut metadata = json!({ "resourceVersion": page.resource_version.to_string() });
            if let (Some(token), Some(fields)) = (page.continue_token, metadata.as_object_mut()) {
                fields.insert("continue".to_owned(), json!(token));
                fields.insert("remainingItemCount".to_owned(), json!(page.remaining));
            }
            let list = if request.metadata_only {
                json!({
                    "kind": "PartialObjectMetadataList",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": metadata,
                    "items": page.items.iter().map(partial_object_metadata).collect::<Vec<_>>(),
                })
            } else {
                json!({
                    "kind": format!("{}List", resource.kind),
                    "apiVersion": resource.api_version(version),
                    "metadata": metadata,
                    "items": page.items,
                })
            };
            Ok(json_response(StatusCode::OK, &list))
        }
        (&Method::GET, Some(name)) => {
            let object = lock(&shared.store).get(&resource, version, namespace, name)?;
            let object = if request.metadata_only { partial_object_metadata(&object) } else { object };
            Ok(json_response(StatusCode::OK, &object))
        }
        (&Method::POST, None) => {
            if resource.namespaced && namespace.is_none() {
                return Err(ApiError::unknown_resource());
            }
            let body = json_body(request)?;
            let created = lock(&shared.store).create(&resource, version, namespace, body, dry_run)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (&Method::PUT, Some(name)) => {
            let body = json_body(request)?;
            let replaced = lock(&shared.store).replace(&resource, version, namespace, name, body, target, dry_run)?;
            Ok(json_response(StatusCode::OK, &replaced))
        }
        (&Method::PATCH, Some(name)) => patch(shared, request, &resource, &route, name, target, &query),
        (&Method::DELETE, Some(name)) => {
            let options = delete_options(request.body, &query)?;
            let dry_run = dry_run || options.1;
            let deletion = lock(&shared.store).delete(&resource, version, namespace, name, &options.0, dry_run)?;
            Ok(match deletion {
                // 200, not 202, as the real server answers unless `orphanDependents: false`.
                Deletion::Pending(object) => json_response(StatusCode::OK, &object),
                Deletion::Removed(object) => json_response(StatusCode::OK, &success_status(&resource, name, &object)),
            })
        }
        (&Method::DELETE, None) => {
            let (options, body_dry_run) = delete_options(request.body, &query)?;
            let selectors = Selectors {
                labels: LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))?,
                fields: FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))?,
            };
            let mut store = lock(&shared.store);
            let page = store.list(&resource, version, namespace, &selectors, None, None)?;
            let mut items = Vec::new();
            for object in page.items {
                let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
                let namespace = object.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_owned);
                match store.delete(
                    &resource,
                    version,
                    namespace.as_deref(),
                    &name,
                    &options,
                    dry_run || body_dry_run,
                )? {
                    Deletion::Pending(object) | Deletion::Removed(object) => items.push(object),
                }
            }
            let list = json!({
                "kind": format!("{}List", resource.kind),
                "apiVersion": resource.api_version(version),
                "metadata": { "resourceVersion": store.resource_version().to_string() },
                "items": items,
            });
            Ok(json_response(StatusCode::OK, &list))
        }
        (method, _) => Err(ApiError::method_not_allowed(method.as_str())),
    }
}

fn patch(
    shared: &Shared,
    request: &Request<'_>,
    resource: &ResourceType,
    route: &Route<'_>,
    name: &str,
    target: Target,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let dry_run = query.get("dryRun").is_some_and(|d| d == "All");
    let content_type = request.content_type.unwrap_or_default();
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    let body = std::str::from_utf8(request.body).map_err(|_| ApiError::bad_request("the request body is not UTF-8"))?;
    let parse_json =
        || serde_json::from_str::<Value>(body).map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")));
    let patch = match media_type {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => PatchBody::Merge(parse_json()?),
        "application/json-patch+json" => PatchBody::Json(
            serde_json::from_str(body).map_err(|e| ApiError::bad_request(format!("error decoding JSON patch: {e}")))?,
        ),
        "application/apply-patch+yaml" => {
            let manager = query.get("fieldManager").filter(|m| !m.is_empty()).ok_or_else(|| {
                ApiError::invalid("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch")
            })?;
            let force = match query.get("force").map(String::as_str) {
                None | Some("false") => false,
                Some("true") => true,
                Some(other) => {
                    return Err(ApiError::bad_request(format!("invalid force value {other:?}")));
                }
            };
            let applied = match serde_json::from_str::<Value>(body) {
                Ok(json) => json,
                Err(_) => serde_saphyr::from_str::<Value>(body)
                    .map_err(|e| ApiError::bad_request(format!("error decoding YAML apply patch: {e}")))?,
            };
            let request = ApplyRequest { manager, force, target, dry_run };
            let mut store = lock(&shared.store);
            let existed = store.get(resource, route.version, route.namespace, name).is_ok();
            let applied = store.apply(resource, route.version, route.namespace, name, applied, request)?;
            let code = if existed { StatusCode::OK } else { StatusCode::CREATED };
            return Ok(json_response(code, &applied));
        }
        _ => return Err(ApiError::unsupported_media_type(content_type)),
    };
    let patched = lock(&shared.store).patch(resource, route.version, route.namespace, name, &patch, target, dry_run)?;
    Ok(json_response(StatusCode::OK, &patched))
}

/// Parses a POST/PUT body; only JSON is accepted, as kube-client sends.
fn json_body(request: &Request<'_>) -> Result<Value, ApiError> {
    let media_type = request.content_type.unwrap_or("application/json").split(';').next().unwrap_or_default().trim();
    if media_type != "application/json" {
        return Err(ApiError::unsupported_media_type(media_type));
    }
    serde_json::from_slice(request.body)
        .map_err(|e| ApiError::bad_request(format!("the body of the request could not be decoded as JSON: {e}")))
}

/// Reads `DeleteOptions` from the body (kube-client sends one) and the query string. Returns
/// the options and whether the body asked for a dry run.
fn delete_options(body: &Bytes, query: &HashMap<String, String>) -> Result<(DeleteOptions, bool), ApiError> {
    let parsed: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    let text = |pointer: &str| parsed.pointer(pointer).and_then(Value::as_str).map(str::to_owned);
    let policy = text("/propagationPolicy").or_else(|| query.get("propagationPolicy").cloned());
    let propagation = match policy.as_deref() {
        None | Some("Background") => Propagation::Background,
        Some("Foreground") => Propagation::Foreground,
        Some("Orphan") => Propagation::Orphan,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "propagationPolicy: Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
            )));
        }
    };
    let dry_run = parsed
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|modes| modes.iter().any(|m| m.as_str() == Some("All")));
    let options = DeleteOptions {
        uid: text("/preconditions/uid"),
        resource_version: text("/preconditions/resourceVersion"),
        propagation,
    };
    Ok((options, dry_run))
}

fn success_status(resource: &ResourceType, name: &str, object: &Value) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {
            "name": name,
            "group": resource.group,
            "kind": resource.plural,
            "uid": object.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
        },
    })
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn api_groups(store: &Store) -> Value {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for resource in store.registry().types().iter().filter(|t| !t.group.is_empty()) {
        match groups.iter_mut().find(|(group, _)| *group == resource.group) {
            Some((_, versions)) => {
                versions
                    .extend(resource.versions.iter().filter(|v| !versions.contains(v)).cloned().collect::<Vec<_>>());
            }
            None => groups.push((resource.group.clone(), resource.versions.clone())),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(group, versions)| {
            let versions: Vec<Value> =
                versions.iter().map(|v| json!({ "groupVersion": format!("{group}/{v}"), "version": v })).collect();
            json!({ "name": group, "versions": versions, "preferredVersion": versions.first() })
        })
        .collect();
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
}

fn api_resources(store: &Store, group: &str, version: &str) -> Result<Value, ApiError> {
    let served: Vec<&ResourceType> = store
        .registry()
        .types()
        .iter()
        .filter(|t| t.group == group && t.versions.iter().any(|v| v == version))
        .collect();
    if served.is_empty() {
        return Err(ApiError::unknown_resource());
    }
    let verbs = json!(["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]);
    let mut resources = Vec::new();
    for resource in served {
        resources.push(json!({ "name": resource.plural, "singularName": "", "namespaced": resource.namespaced, "kind": resource.kind, "verbs": verbs }));
        if resource.status_subresource {
            resources.push(json!({ "name": format!("{}/status", resource.plural), "singularName": "", "namespaced": resource.namespaced, "kind": resource.kind, "verbs": ["get", "patch", "update"] }));
        }
    }
    let group_version = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    Ok(json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources }))
}

/// What one watch stream filters on.
struct WatchFilter {
    resource: ResourceType,
    version: String,
    namespace: Option<String>,
    selectors: Selectors,
    metadata_only: bool,
}

impl WatchFilter {
    /// The frame a stored event becomes on this watch, if any. Selector watches see `ADDED`
    /// when an object starts matching and `DELETED` when it stops, like the real watch cache.
    fn frame(&self, event: &StoredEvent) -> Option<Value> {
        if event.group != self.resource.group
            || event.plural != self.resource.plural
            || self.namespace.as_ref().is_some_and(|ns| *ns != event.namespace)
        {
            return None;
        }
        let now = self.selectors.matches(&event.object);
        let before = event.previous.as_ref().is_some_and(|p| self.selectors.matches(p));
        let event_type = match (event.event_type, before, now) {
            (EventType::Modified, true, true) => EventType::Modified,
            (EventType::Modified, false, true) => EventType::Added,
            (EventType::Modified, true, false) => EventType::Deleted,
            (EventType::Modified, false, false) => return None,
            (other, _, true) => other,
            (_, _, false) => return None,
        };
        let mut object = event.object.clone();
        if let Some(fields) = object.as_object_mut() {
            fields.insert("apiVersion".to_owned(), json!(self.resource.api_version(&self.version)));
        }
        if self.metadata_only {
            object = partial_object_metadata(&object);
        }
        Some(json!({ "type": event_type.as_str(), "object": object }))
    }

    fn bookmark(&self, resource_version: u64, initial_events_end: bool) -> Value {
        let mut metadata = json!({ "resourceVersion": resource_version.to_string() });
        if initial_events_end && let Some(fields) = metadata.as_object_mut() {
            fields.insert("annotations".to_owned(), json!({ "k8s.io/initial-events-end": "true" }));
        }
        let (kind, api_version) = if self.metadata_only {
            ("PartialObjectMetadata".to_owned(), "meta.k8s.io/v1".to_owned())
        } else {
            (self.resource.kind.clone(), self.resource.api_version(&self.version))
        };
        json!({
            "type": "BOOKMARK",
            "object": { "kind": kind, "apiVersion": api_version, "metadata": metadata },
        })
    }
}

/// Starts a watch: validates parameters under the store lock, then streams from a task.
fn watch(shared: &Shared, filter: WatchFilter, query: &HashMap<String, String>) -> Result<Response, ApiError> {
    let flag = |name: &str| query.get(name).is_some_and(|v| v == "true" || v == "1");
    let bookmarks = flag("allowWatchBookmarks");
    let send_initial_events = flag("sendInitialEvents");
    let timeout = match query.get("timeoutSeconds") {
        Some(seconds) => {
            seconds.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {seconds:?}")))?
        }
        None => 0,
    };
    // Zero (or absent) means the server's default, as on the real server.
    let timeout = match timeout {
        0 => DEFAULT_WATCH_TIMEOUT,
        seconds => Duration::from_secs(seconds),
    };
    let start = match query.get("resourceVersion").map(String::as_str) {
        _ if send_initial_events => WatchStart::CurrentState,
        None | Some("" | "0") => WatchStart::CurrentState,
        Some(version) => WatchStart::After(
            version
                .parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {version:?}")))?,
        ),
    };
    let (sender, receiver) = mpsc::channel::<Bytes>(64);
    let opened = lock(&shared.store).open_watch(start, &filter.resource, filter.namespace.as_deref());
    let epoch = shared.watch_epoch.subscribe();
    let stream = WatchStream {
        filter,
        sender,
        timeout,
        bookmark_interval: bookmarks.then_some(shared.bookmark_interval),
        initial_events_end: send_initial_events && bookmarks,
        epoch,
    };
    match opened {
        // Like the real server: the watch is accepted, then ends with an ERROR event.
        Err(gone) => {
            tokio::spawn(stream.fail(gone));
        }
        Ok(feed) => {
            tokio::spawn(stream.run(feed.backlog, feed.live, feed.resource_version));
        }
    }
    let body = Body::from_stream(receiver.map(Ok::<Bytes, Infallible>));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap_or_else(|_| ApiError::bad_request("watch response could not be built").into_response()))
}

/// The task behind one watch response.
struct WatchStream {
    filter: WatchFilter,
    sender: mpsc::Sender<Bytes>,
    timeout: Duration,
    bookmark_interval: Option<Duration>,
    initial_events_end: bool,
    epoch: watch::Receiver<u64>,
}

impl WatchStream {
    /// Sends one newline-terminated event; `false` once the client has gone away.
    async fn send(&mut self, frame: &Value) -> bool {
        use futures::SinkExt;
        let mut line = frame.to_string();
        line.push('\n');
        self.sender.send(Bytes::from(line)).await.is_ok()
    }

    async fn fail(mut self, error: ApiError) {
        self.send(&json!({ "type": "ERROR", "object": error.to_status() })).await;
    }

    async fn run(
        mut self,
        backlog: Vec<Arc<StoredEvent>>,
        mut live: broadcast::Receiver<Arc<StoredEvent>>,
        mut resource_version: u64,
    ) {
        for event in &backlog {
            resource_version = resource_version.max(event.resource_version);
            if let Some(frame) = self.filter.frame(event)
                && !self.send(&frame).await
            {
                return;
            }
        }
        if self.initial_events_end {
            let bookmark = self.filter.bookmark(resource_version, true);
            if !self.send(&bookmark).await {
                return;
            }
        }
        let deadline = tokio::time::sleep(self.timeout);
        tokio::pin!(deadline);
        let interval = self.bookmark_interval.unwrap_or(Duration::from_secs(3600));
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                () = &mut deadline => break,
                changed = self.epoch.changed() => {
                    // Closed by the test (or the server is shutting down): end abruptly,
                    // without the final bookmark, like a dropped connection.
                    let _ = changed;
                    return;
                }
                _ = ticker.tick(), if self.bookmark_interval.is_some() => {
                    let bookmark = self.filter.bookmark(resource_version, false);
                    if !self.send(&bookmark).await {
                        return;
                    }
                }
                received = live.recv() => match received {
                    Ok(event) => {
                        if event.resource_version <= resource_version {
                            continue;
                        }
                        resource_version = event.resource_version;
                        if let Some(frame) = self.filter.frame(&event)
                            && !self.send(&frame).await
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let gone = ApiError::gone(resource_version, resource_version + 1);
                        self.fail(gone).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
        if self.bookmark_interval.is_some() {
            let bookmark = self.filter.bookmark(resource_version, false);
            self.send(&bookmark).await;
        }
    }
}
