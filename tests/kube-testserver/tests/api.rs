//! End-to-end tests of the test API server through a real `kube::Client`: every verb, watches
//! and kube-runtime's watcher/reflector, optimistic concurrency, server-side apply, the status
//! subresource, generation, garbage collection, finalizers, fault injection and error shapes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PartialObjectMeta, Patch, PatchParams,
    PostParams, Preconditions, WatchEvent, WatchParams,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{CustomResource, CustomResourceExt, Resource, ResourceExt};
use reco_kube_testserver::TestApiServer;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const NAMESPACE: &str = "reco";

/// A small custom resource with a status subresource.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(group = "test.reco.dev", version = "v1", kind = "Widget", namespaced, status = "WidgetStatus")]
pub struct WidgetSpec {
    size: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    color: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct WidgetStatus {
    ready: bool,
}

fn config_map(name: &str, labels: &[(&str, &str)], data: &[(&str, &str)]) -> ConfigMap {
    let mut config_map = ConfigMap::default();
    config_map.metadata.name = Some(name.to_owned());
    config_map.metadata.labels =
        Some(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>());
    config_map.data = Some(data.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect());
    config_map
}

fn deployment(name: &str, replicas: i32) -> Result<Deployment, serde_json::Error> {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{ "name": "main", "image": "reco/model:1" }] }
            }
        }
    }))
}

fn api_code<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> Option<(u16, String)> {
    match result {
        Err(kube::Error::Api(status)) => Some((status.code, status.reason.clone())),
        _ => None,
    }
}

async fn widget_server() -> Result<(TestApiServer, Api<Widget>), Box<dyn std::error::Error>> {
    let server = TestApiServer::start().await?;
    server.register_custom_resource(&Widget::crd())?;
    let widgets: Api<Widget> = Api::namespaced(server.client(), NAMESPACE);
    Ok((server, widgets))
}

/// Sends one raw HTTP/1.1 request, for bodies kube-client would never produce.
async fn raw_request(
    server: &TestApiServer,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> Result<(u16, Value), Box<dyn std::error::Error>> {
    use std::io::{Read, Write};
    let address = server.address();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let response = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect(address)?;
        stream.write_all(request.as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    })
    .await??;
    let code = response.split_whitespace().nth(1).ok_or("no status line")?.parse()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b).ok_or("no body")?;
    Ok((code, serde_json::from_str(body)?))
}

async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

#[tokio::test]
async fn create_get_list_replace_patch_delete_config_map() -> TestResult {
    let server = TestApiServer::start().await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(server.client(), NAMESPACE);

    let created =
        config_maps.create(&PostParams::default(), &config_map("settings", &[("app", "reco")], &[("a", "1")])).await?;
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(created.metadata.namespace.as_deref(), Some(NAMESPACE));
    let first_version: u64 = created.resource_version().ok_or("no resourceVersion")?.parse()?;

    let fetched = config_maps.get("settings").await?;
    assert_eq!(fetched, created);

    let mut changed = fetched.clone();
    changed.data = Some([("a".to_owned(), "2".to_owned())].into());
    let replaced = config_maps.replace("settings", &PostParams::default(), &changed).await?;
    assert!(replaced.resource_version().ok_or("no resourceVersion")?.parse::<u64>()? > first_version);
    assert_eq!(replaced.data, changed.data);

    let merged =
        config_maps.patch("settings", &PatchParams::default(), &Patch::Merge(json!({ "data": { "b": "3" } }))).await?;
    assert_eq!(merged.data.as_ref().map(BTreeMap::len), Some(2));
    let strategic = config_maps
        .patch("settings", &PatchParams::default(), &Patch::Strategic(json!({ "data": { "a": null } })))
        .await?;
    assert_eq!(strategic.data, Some([("b".to_owned(), "3".to_owned())].into()));
    let operations: json_patch::Patch = serde_json::from_value(json!([
        { "op": "test", "path": "/data/b", "value": "3" },
        { "op": "add", "path": "/data/c", "value": "4" }
    ]))?;
    let json_patched = config_maps.patch("settings", &PatchParams::default(), &Patch::Json::<()>(operations)).await?;
    assert_eq!(json_patched.data.as_ref().and_then(|d| d.get("c")).map(String::as_str), Some("4"));
    let failing_test: json_patch::Patch =
        serde_json::from_value(json!([{ "op": "test", "path": "/data/b", "value": "x" }]))?;
    let failed = config_maps.patch("settings", &PatchParams::default(), &Patch::Json::<()>(failing_test)).await;
    assert_eq!(api_code(failed), Some((422, "Invalid".to_owned())));

    let listed = config_maps.list(&ListParams::default()).await?;
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.metadata.resource_version, Some(server.resource_version().to_string()));

    let deleted = config_maps.delete("settings", &DeleteParams::default()).await?;
    assert!(deleted.is_right(), "immediate deletion answers a Success status");
    assert_eq!(api_code(config_maps.get("settings").await), Some((404, "NotFound".to_owned())));
    assert_eq!(
        api_code(config_maps.delete("settings", &DeleteParams::default()).await),
        Some((404, "NotFound".to_owned()))
    );
    Ok(())
}

#[tokio::test]
async fn selectors_pagination_and_generate_name() -> TestResult {
    let server = TestApiServer::start().await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(server.client(), NAMESPACE);
    let elsewhere: Api<ConfigMap> = Api::namespaced(server.client(), "other");
    for (name, tier) in [("a", "front"), ("b", "back"), ("c", "front"), ("d", "cache"), ("e", "back")] {
        config_maps.create(&PostParams::default(), &config_map(name, &[("tier", tier), ("app", "reco")], &[])).await?;
    }
    elsewhere.create(&PostParams::default(), &config_map("z", &[("tier", "front")], &[])).await?;

    let names =
        |list: kube::core::ObjectList<ConfigMap>| list.items.iter().map(ResourceExt::name_any).collect::<Vec<_>>();
    assert_eq!(names(config_maps.list(&ListParams::default().labels("tier=front")).await?), ["a", "c"]);
    assert_eq!(names(config_maps.list(&ListParams::default().labels("tier!=front,app")).await?), ["b", "d", "e"]);
    assert_eq!(names(config_maps.list(&ListParams::default().labels("tier in (cache, back)")).await?), ["b", "d", "e"]);
    assert_eq!(
        names(config_maps.list(&ListParams::default().labels("tier notin (back),!missing")).await?),
        ["a", "c", "d"]
    );
    assert_eq!(names(config_maps.list(&ListParams::default().fields("metadata.name=d")).await?), ["d"]);
    let everywhere: Api<ConfigMap> = Api::all(server.client());
    assert_eq!(
        names(everywhere.list(&ListParams::default().labels("tier=front")).await?),
        ["z", "a", "c"],
        "namespace, then name"
    );
    assert_eq!(
        api_code(config_maps.list(&ListParams::default().fields("spec.nodeName=x")).await),
        Some((400, "BadRequest".to_owned()))
    );

    let first = config_maps.list(&ListParams::default().limit(2)).await?;
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    let token = first.metadata.continue_.clone().ok_or("no continue token")?;
    let second = config_maps.list(&ListParams::default().limit(2).continue_token(&token)).await?;
    let token = second.metadata.continue_.clone().ok_or("no continue token")?;
    let third = config_maps.list(&ListParams::default().limit(2).continue_token(&token)).await?;
    assert_eq!(third.metadata.continue_, None);
    assert_eq!([names(first), names(second), names(third)].concat(), ["a", "b", "c", "d", "e"]);

    let mut generated = ConfigMap::default();
    generated.metadata.generate_name = Some("job-".to_owned());
    let created = config_maps.create(&PostParams::default(), &generated).await?;
    let name = created.name_any();
    assert!(name.starts_with("job-") && name.len() == 9, "{name}");
    Ok(())
}

#[tokio::test]
async fn optimistic_concurrency_conflicts() -> TestResult {
    let server = TestApiServer::start().await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(server.client(), NAMESPACE);
    let created = config_maps.create(&PostParams::default(), &config_map("cm", &[], &[("k", "v")])).await?;
    assert_eq!(
        api_code(config_maps.create(&PostParams::default(), &config_map("cm", &[], &[])).await),
        Some((409, "AlreadyExists".to_owned()))
    );
    config_maps.patch("cm", &PatchParams::default(), &Patch::Merge(json!({ "data": { "k": "w" } }))).await?;

    let stale = created.clone();
    assert_eq!(
        api_code(config_maps.replace("cm", &PostParams::default(), &stale).await),
        Some((409, "Conflict".to_owned()))
    );
    let stale_version = created.resource_version().ok_or("no resourceVersion")?;
    let stale_patch = json!({ "metadata": { "resourceVersion": stale_version }, "data": { "k": "x" } });
    assert_eq!(
        api_code(config_maps.patch("cm", &PatchParams::default(), &Patch::Merge(stale_patch)).await),
        Some((409, "Conflict".to_owned()))
    );
    let stale_delete = DeleteParams {
        preconditions: Some(Preconditions { resource_version: Some(stale_version), uid: None }),
        ..DeleteParams::default()
    };
    assert_eq!(api_code(config_maps.delete("cm", &stale_delete).await), Some((409, "Conflict".to_owned())));
    assert_eq!(
        server.get_json("", "configmaps", Some(NAMESPACE), "cm").and_then(|o| o.pointer("/data/k").cloned()),
        Some(json!("w"))
    );

    // A no-op write keeps the resourceVersion.
    let current = config_maps.get("cm").await?;
    let unchanged = config_maps.replace("cm", &PostParams::default(), &current).await?;
    assert_eq!(unchanged.resource_version(), current.resource_version());
    Ok(())
}

#[tokio::test]
async fn watch_reports_changes_and_bookmarks() -> TestResult {
    let server = TestApiServer::builder().bookmark_interval(Duration::from_millis(100)).start().await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(server.client(), NAMESPACE);
    config_maps.create(&PostParams::default(), &config_map("before", &[], &[])).await?;
    let start = server.resource_version().to_string();

    let initial: Vec<_> =
        config_maps.watch(&WatchParams::default().timeout(1).disable_bookmarks(), "0").await?.try_collect().await?;
    assert!(matches!(initial.as_slice(), [WatchEvent::Added(cm)] if cm.name_any() == "before"));

    let mut events = config_maps.watch(&WatchParams::default().timeout(2), &start).await?.boxed();
    config_maps.create(&PostParams::default(), &config_map("w", &[], &[])).await?;
    config_maps.patch("w", &PatchParams::default(), &Patch::Merge(json!({ "data": { "x": "1" } }))).await?;
    config_maps.delete("w", &DeleteParams::default()).await?;
    let mut seen = Vec::new();
    while let Some(event) = events.try_next().await? {
        seen.push(match event {
            WatchEvent::Added(cm) => format!("ADDED {}", cm.name_any()),
            WatchEvent::Modified(cm) => format!("MODIFIED {}", cm.name_any()),
            WatchEvent::Deleted(cm) => format!("DELETED {}", cm.name_any()),
            WatchEvent::Bookmark(bookmark) => {
                format!("BOOKMARK {}", bookmark.metadata.resource_version)
            }
            WatchEvent::Error(status) => format!("ERROR {}", status.code),
        });
    }
    let changes: Vec<&str> = seen.iter().map(String::as_str).filter(|e| !e.starts_with("BOOKMARK")).collect();
    assert_eq!(changes, ["ADDED w", "MODIFIED w", "DELETED w"]);
    assert!(seen.iter().filter(|e| e.starts_with("BOOKMARK")).count() >= 2, "{seen:?}");
    assert_eq!(seen.last(), Some(&format!("BOOKMARK {}", server.resource_version())));

    // Selector watches see objects enter and leave the selection.
    let mut selected = config_maps
        .watch(
            &WatchParams::default().labels("tier=front").timeout(1).disable_bookmarks(),
            &server.resource_version().to_string(),
        )
        .await?
        .boxed();
    config_maps.create(&PostParams::default(), &config_map("s", &[("tier", "back")], &[])).await?;
    config_maps
        .patch("s", &PatchParams::default(), &Patch::Merge(json!({ "metadata": { "labels": { "tier": "front" } } })))
        .await?;
    config_maps
        .patch("s", &PatchParams::default(), &Patch::Merge(json!({ "metadata": { "labels": { "tier": "back" } } })))
        .await?;
    assert!(matches!(selected.try_next().await?, Some(WatchEvent::Added(_))));
    assert!(matches!(selected.try_next().await?, Some(WatchEvent::Deleted(_))));
    Ok(())
}

#[tokio::test]
async fn watch_from_compacted_version_is_gone() -> TestResult {
    let server = TestApiServer::builder().event_history(2).start().await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(server.client(), NAMESPACE);
    let old = server.resource_version().to_string();
    for name in ["a", "b", "c"] {
        config_maps.create(&PostParams::default(), &config_map(name, &[], &[])).await?;
    }
    let mut events = config_maps.watch(&WatchParams::default().timeout(1), &old).await?.boxed();
    match events.try_next().await? {
        Some(WatchEvent::Error(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
        }
        other => return Err(format!("expected a 410 ERROR event, got {other:?}").into()),
    }
    // Within the retained history the watch replays.
    let recent = (server.resource_version() - 1).to_string();
    let replayed: Vec<_> =
        config_maps.watch(&WatchParams::default().timeout(1).disable_bookmarks(), &recent).await?.try_collect().await?;
    assert!(matches!(replayed.as_slice(), [WatchEvent::Added(cm)] if cm.name_any() == "c"));
    Ok(())
}

#[tokio::test]
async fn watcher_and_reflector_converge_through_restarts() -> TestResult {
    let server = TestApiServer::builder().bookmark_interval(Duration::from_millis(100)).start().await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(server.client(), NAMESPACE);
    config_maps.create(&PostParams::default(), &config_map("one", &[], &[])).await?;

    let (reader, writer) = reflector::store();
    let stream =
        reflector(writer, watcher(config_maps.clone(), watcher::Config::default().timeout(5)).default_backoff())
            .applied_objects();
    let driver = tokio::spawn(stream.for_each(|_| async {}));
    reader.wait_until_ready().await?;
    assert_eq!(reader.state().len(), 1);

    config_maps.create(&PostParams::default(), &config_map("two", &[], &[])).await?;
    assert!(eventually(|| reader.state().len() == 2).await);

    // An API server restart: watches drop and the watcher resumes from its last version.
    server.close_watches();
    config_maps.create(&PostParams::default(), &config_map("three", &[], &[])).await?;
    assert!(eventually(|| reader.state().len() == 3).await);

    // A restart that expires every version: the resumed watch gets 410 Gone and the
    // watcher re-lists.
    server.clear_requests();
    server.simulate_restart();
    config_maps.delete("one", &DeleteParams::default()).await?;
    assert!(eventually(|| reader.state().len() == 2).await);
    let relisted = || {
        server
            .requests()
            .iter()
            .any(|r| !r.is_watch() && r.method == "GET" && r.path() == "/api/v1/namespaces/reco/configmaps")
    };
    assert!(eventually(relisted).await);
    driver.abort();
    Ok(())
}

#[tokio::test]
async fn server_side_apply_creates_updates_removes_and_conflicts() -> TestResult {
    let server = TestApiServer::start().await?;
    let deployments: Api<Deployment> = Api::namespaced(server.client(), NAMESPACE);
    let operator = PatchParams::apply("reco-operator");
    let mut desired = serde_json::to_value(deployment("web", 2)?)?;
    desired["metadata"]["labels"] = json!({ "app": "web", "canary": "true" });

    let created = deployments.patch("web", &operator, &Patch::Apply(&desired)).await?;
    assert_eq!(created.metadata.generation, Some(1));
    let managed = created.metadata.managed_fields.clone().unwrap_or_default();
    assert_eq!(managed.len(), 1);
    assert_eq!(managed[0].manager.as_deref(), Some("reco-operator"));
    assert_eq!(managed[0].operation.as_deref(), Some("Apply"));

    // Re-applying without the canary label removes it; the replica change bumps generation.
    desired["metadata"]["labels"] = json!({ "app": "web" });
    desired["spec"]["replicas"] = json!(3);
    let updated = deployments.patch("web", &operator, &Patch::Apply(&desired)).await?;
    assert_eq!(updated.labels().get("canary"), None);
    assert_eq!(updated.spec.as_ref().and_then(|s| s.replicas), Some(3));
    assert_eq!(updated.metadata.generation, Some(2));

    // An identical re-apply is a no-op.
    let again = deployments.patch("web", &operator, &Patch::Apply(&desired)).await?;
    assert_eq!(again.resource_version(), updated.resource_version());

    // Another manager setting the same field to a different value conflicts...
    let autoscaler = json!({ "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "web" }, "spec": { "replicas": 5 } });
    let conflict = deployments.patch("web", &PatchParams::apply("autoscaler"), &Patch::Apply(&autoscaler)).await;
    match conflict {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
            assert!(status.message.contains("conflict with \"reco-operator\""), "{}", status.message);
            assert!(status.message.contains(".spec.replicas"), "{}", status.message);
        }
        other => return Err(format!("expected an apply conflict, got {other:?}").into()),
    }
    // ...unless forced, which moves ownership; the operator re-applying then conflicts.
    let forced =
        deployments.patch("web", &PatchParams::apply("autoscaler").force(), &Patch::Apply(&autoscaler)).await?;
    assert_eq!(forced.spec.as_ref().and_then(|s| s.replicas), Some(5));
    assert_eq!(
        api_code(deployments.patch("web", &operator, &Patch::Apply(&desired)).await),
        Some((409, "Conflict".to_owned()))
    );

    // The same value is shared ownership, not a conflict; the operator dropping replicas
    // leaves them to the autoscaler.
    let mut without_replicas = desired.clone();
    if let Some(spec) = without_replicas["spec"].as_object_mut() {
        spec.remove("replicas");
    }
    let shared = deployments.patch("web", &operator, &Patch::Apply(&without_replicas)).await?;
    assert_eq!(shared.spec.as_ref().and_then(|s| s.replicas), Some(5));

    let missing_manager = deployments.patch("web", &PatchParams::default(), &Patch::Apply(&desired)).await;
    assert_eq!(api_code(missing_manager), Some((422, "Invalid".to_owned())));
    Ok(())
}

#[tokio::test]
async fn status_subresource_and_generation() -> TestResult {
    let (server, widgets) = widget_server().await?;
    let mut widget = Widget::new("w", WidgetSpec { size: 1, color: None });
    widget.status = Some(WidgetStatus { ready: true });
    let created = widgets.create(&PostParams::default(), &widget).await?;
    assert_eq!(created.status, None, "status is dropped on create");
    assert_eq!(created.metadata.generation, Some(1));

    let main_patch = json!({ "spec": { "size": 2 }, "status": { "ready": true } });
    let patched = widgets.patch("w", &PatchParams::default(), &Patch::Merge(main_patch)).await?;
    assert_eq!(patched.status, None, "the main resource ignores status");
    assert_eq!(patched.metadata.generation, Some(2));

    let status_patch = json!({ "spec": { "size": 9 }, "status": { "ready": true } });
    let with_status = widgets.patch_status("w", &PatchParams::default(), &Patch::Merge(status_patch)).await?;
    assert_eq!(with_status.status, Some(WidgetStatus { ready: true }));
    assert_eq!(with_status.spec.size, 2, "the status subresource ignores spec");
    assert_eq!(with_status.metadata.generation, Some(2), "status changes keep generation");

    let labelled = widgets
        .patch("w", &PatchParams::default(), &Patch::Merge(json!({ "metadata": { "labels": { "a": "b" } } })))
        .await?;
    assert_eq!(labelled.metadata.generation, Some(2), "metadata changes keep generation");

    let mut replace_status = widgets.get_status("w").await?;
    replace_status.status = Some(WidgetStatus { ready: false });
    let replaced = widgets.replace_status("w", &PostParams::default(), &replace_status).await?;
    assert_eq!(replaced.status, Some(WidgetStatus { ready: false }));

    let applied_status = json!({ "apiVersion": "test.reco.dev/v1", "kind": "Widget", "metadata": { "name": "w" }, "status": { "ready": true } });
    let applied =
        widgets.patch_status("w", &PatchParams::apply("status-writer"), &Patch::Apply(&applied_status)).await?;
    assert_eq!(applied.status, Some(WidgetStatus { ready: true }));
    let entry = applied
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.manager.as_deref() == Some("status-writer"));
    assert_eq!(entry.and_then(|m| m.subresource).as_deref(), Some("status"));

    // Custom resources refuse unconditional PUT.
    let mut unconditional = widgets.get("w").await?;
    unconditional.metadata.resource_version = None;
    assert_eq!(
        api_code(widgets.replace("w", &PostParams::default(), &unconditional).await),
        Some((422, "Invalid".to_owned()))
    );
    assert_eq!(server.objects("test.reco.dev", "widgets").len(), 1);
    Ok(())
}

#[tokio::test]
async fn deployment_status_is_isolated() -> TestResult {
    let server = TestApiServer::start().await?;
    let deployments: Api<Deployment> = Api::namespaced(server.client(), NAMESPACE);
    deployments.create(&PostParams::default(), &deployment("web", 1)?).await?;
    let status = json!({ "status": { "readyReplicas": 1, "observedGeneration": 1 } });
    deployments.patch_status("web", &PatchParams::default(), &Patch::Merge(status)).await?;
    let mut fetched = deployments.get("web").await?;
    assert_eq!(fetched.status.as_ref().and_then(|s| s.ready_replicas), Some(1));
    fetched.status = None;
    if let Some(spec) = fetched.spec.as_mut() {
        spec.replicas = Some(4);
    }
    let replaced = deployments.replace("web", &PostParams::default(), &fetched).await?;
    assert_eq!(
        replaced.status.as_ref().and_then(|s| s.ready_replicas),
        Some(1),
        "PUT on the main resource keeps status"
    );
    assert_eq!(replaced.metadata.generation, Some(2));
    Ok(())
}

#[tokio::test]
async fn owner_references_cascade_and_finalizers_hold() -> TestResult {
    let (server, widgets) = widget_server().await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(server.client(), NAMESPACE);
    let deployments: Api<Deployment> = Api::namespaced(server.client(), NAMESPACE);
    let owner =
        widgets.create(&PostParams::default(), &Widget::new("owner", WidgetSpec { size: 1, color: None })).await?;
    let owner_ref = owner.controller_owner_ref(&()).ok_or("no owner reference")?;

    let mut child = deployment("child", 1)?;
    child.metadata.owner_references = Some(vec![owner_ref.clone()]);
    let child = deployments.create(&PostParams::default(), &child).await?;
    let grandchild_ref = child.controller_owner_ref(&()).ok_or("no owner reference")?;
    let mut grandchild = config_map("grandchild", &[], &[]);
    grandchild.metadata.owner_references = Some(vec![grandchild_ref]);
    config_maps.create(&PostParams::default(), &grandchild).await?;
    // A dependent with a second, live owner survives.
    let survivor_owner = config_maps.create(&PostParams::default(), &config_map("other-owner", &[], &[])).await?;
    let mut survivor = config_map("survivor", &[], &[]);
    survivor.metadata.owner_references = Some(vec![
        owner_ref,
        OwnerReference {
            api_version: "v1".to_owned(),
            kind: "ConfigMap".to_owned(),
            name: "other-owner".to_owned(),
            uid: survivor_owner.uid().ok_or("no uid")?,
            ..OwnerReference::default()
        },
    ]);
    config_maps.create(&PostParams::default(), &survivor).await?;
    // A finalizer holds the owner.
    widgets
        .patch(
            "owner",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "finalizers": ["reco.dev/cleanup"] } })),
        )
        .await?;

    let pending = widgets.delete("owner", &DeleteParams::default()).await?;
    let pending = pending.left().ok_or("a finalizer should keep the object")?;
    assert!(pending.metadata.deletion_timestamp.is_some());
    assert_eq!(pending.metadata.generation, Some(2), "marking for deletion bumps generation");
    assert!(
        server.get_json("apps", "deployments", Some(NAMESPACE), "child").is_some(),
        "dependents wait for the owner"
    );

    let mut watch = widgets
        .watch(&WatchParams::default().timeout(1).disable_bookmarks(), &server.resource_version().to_string())
        .await?
        .boxed();
    widgets
        .patch("owner", &PatchParams::default(), &Patch::Merge(json!({ "metadata": { "finalizers": null } })))
        .await?;
    assert!(matches!(watch.try_next().await?, Some(WatchEvent::Deleted(w)) if w.name_any() == "owner"));
    assert_eq!(api_code(widgets.get("owner").await), Some((404, "NotFound".to_owned())));
    assert!(server.get_json("apps", "deployments", Some(NAMESPACE), "child").is_none());
    assert!(server.get_json("", "configmaps", Some(NAMESPACE), "grandchild").is_none(), "collection is recursive");
    assert!(server.get_json("", "configmaps", Some(NAMESPACE), "survivor").is_some());
    Ok(())
}

#[tokio::test]
async fn injected_failures_surface_and_requests_are_logged() -> TestResult {
    let server = TestApiServer::start().await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(server.client(), NAMESPACE);
    server.inject_failures("POST", "/configmaps", 500, 2);
    for _ in 0..2 {
        let failed = config_maps.create(&PostParams::default(), &config_map("cm", &[], &[])).await;
        assert_eq!(api_code(failed), Some((500, "InternalError".to_owned())));
    }
    config_maps.create(&PostParams::default(), &config_map("cm", &[], &[])).await?;
    server.set_status_code_for_next(403);
    assert_eq!(api_code(config_maps.get("cm").await), Some((403, "Forbidden".to_owned())));

    server.clear_requests();
    config_maps
        .patch(
            "cm",
            &PatchParams::apply("reco"),
            &Patch::Apply(json!({ "apiVersion": "v1", "kind": "ConfigMap", "data": { "k": "v" } })),
        )
        .await?;
    config_maps.delete("cm", &DeleteParams::default()).await?;
    let calls: Vec<String> = server.requests().iter().map(ToString::to_string).collect();
    assert_eq!(
        calls,
        [
            "PATCH /api/v1/namespaces/reco/configmaps/cm?&fieldManager=reco (application/apply-patch+yaml)",
            "DELETE /api/v1/namespaces/reco/configmaps/cm? (application/json)",
        ]
    );
    Ok(())
}

#[tokio::test]
async fn malformed_requests_and_unknown_resources_get_status_errors() -> TestResult {
    let server = TestApiServer::start().await?;
    let (code, status) =
        raw_request(&server, "POST", "/api/v1/namespaces/reco/configmaps", "application/json", "{not json").await?;
    assert_eq!(
        (code, status["kind"].as_str(), status["reason"].as_str(), status["code"].as_u64()),
        (400, Some("Status"), Some("BadRequest"), Some(400))
    );
    let (code, status) =
        raw_request(&server, "PATCH", "/api/v1/namespaces/reco/configmaps/x", "text/plain", "{}").await?;
    assert_eq!((code, status["reason"].as_str()), (415, Some("UnsupportedMediaType")));
    let (code, _) =
        raw_request(&server, "PATCH", "/api/v1/namespaces/reco/configmaps/x", "application/merge-patch+json", "[1,")
            .await?;
    assert_eq!(code, 400);
    let (code, status) = raw_request(
        &server,
        "POST",
        "/api/v1/namespaces/reco/configmaps",
        "application/json",
        r#"{"metadata":{"name":"Bad_Name"}}"#,
    )
    .await?;
    assert_eq!((code, status["reason"].as_str()), (422, Some("Invalid")));
    let (code, _) = raw_request(
        &server,
        "POST",
        "/api/v1/namespaces/reco/configmaps",
        "application/json",
        r#"{"kind":"Secret","metadata":{"name":"x"}}"#,
    )
    .await?;
    assert_eq!(code, 400);
    let (code, _) = raw_request(
        &server,
        "GET",
        "/api/v1/namespaces/reco/configmaps?labelSelector=a%20in%20b",
        "application/json",
        "",
    )
    .await?;
    assert_eq!(code, 400);
    let (code, _) =
        raw_request(&server, "DELETE", "/api/v1/namespaces/reco/configmaps/x", "application/json", "{oops").await?;
    assert_eq!(code, 400);
    let (code, _) =
        raw_request(&server, "GET", "/apis/apps/v1/namespaces/reco/deployments/x/scale", "application/json", "")
            .await?;
    assert_eq!(code, 404);

    let unknown = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("nope.dev", "v1", "Thing"), "things");
    let things: Api<DynamicObject> = Api::namespaced_with(server.client(), NAMESPACE, &unknown);
    assert_eq!(api_code(things.list(&ListParams::default()).await), Some((404, "NotFound".to_owned())));
    let widgets: Api<Widget> = Api::namespaced(server.client(), NAMESPACE);
    assert_eq!(api_code(widgets.get("w").await), Some((404, "NotFound".to_owned())), "CRD not registered yet");
    Ok(())
}

#[tokio::test]
async fn crds_created_through_the_api_are_served() -> TestResult {
    let server = TestApiServer::start().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(server.client());
    let created = crds.create(&PostParams::default(), &Widget::crd()).await?;
    let established = created
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True");
    assert!(established);
    let widgets: Api<Widget> = Api::namespaced(server.client(), NAMESPACE);
    widgets
        .create(&PostParams::default(), &Widget::new("w", WidgetSpec { size: 3, color: Some("red".into()) }))
        .await?;
    let all: Api<Widget> = Api::all(server.client());
    assert_eq!(all.list(&ListParams::default()).await?.items.len(), 1);
    assert_eq!(Widget::plural(&()), "widgets");

    // Deleting the CRD deletes its objects and stops serving the type.
    crds.delete(&Widget::crd().name_any(), &DeleteParams::default()).await?;
    assert!(server.objects("test.reco.dev", "widgets").is_empty());
    assert_eq!(api_code(all.list(&ListParams::default()).await), Some((404, "NotFound".to_owned())));
    Ok(())
}

/// The reconciler of the controller test: an owned ConfigMap mirroring the spec, and a status.
async fn reconcile_widget(widget: Arc<Widget>, client: Arc<kube::Client>) -> Result<Action, kube::Error> {
    let (Some(namespace), Some(owner)) = (widget.namespace(), widget.controller_owner_ref(&())) else {
        return Ok(Action::await_change());
    };
    let name = widget.name_any();
    let manager = PatchParams::apply("widget-controller").force();
    let config_map = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": format!("{name}-config"), "ownerReferences": [owner] },
        "data": { "size": widget.spec.size.to_string() },
    });
    let config_maps: Api<ConfigMap> = Api::namespaced((*client).clone(), &namespace);
    config_maps.patch(&format!("{name}-config"), &manager, &Patch::Apply(&config_map)).await?;
    let widgets: Api<Widget> = Api::namespaced((*client).clone(), &namespace);
    let status = json!({ "apiVersion": "test.reco.dev/v1", "kind": "Widget", "status": { "ready": true } });
    widgets.patch_status(&name, &manager, &Patch::Apply(&status)).await?;
    Ok(Action::await_change())
}

fn retry_widget(_: Arc<Widget>, _: &kube::Error, _: Arc<kube::Client>) -> Action {
    Action::requeue(Duration::from_millis(100))
}

#[tokio::test]
async fn controller_reconciles_owned_objects() -> TestResult {
    let (server, widgets) = widget_server().await?;
    let client = server.client();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let controller = Controller::new(widgets.clone(), watcher::Config::default())
        .owns(config_maps.clone(), watcher::Config::default())
        .run(reconcile_widget, retry_widget, Arc::new(client))
        .for_each(|_| async {});
    let driver = tokio::spawn(controller);
    // The first reconcile's status write fails once; the error policy requeues it.
    server.inject_failures("PATCH", "/widgets/w/status", 500, 1);

    widgets.create(&PostParams::default(), &Widget::new("w", WidgetSpec { size: 2, color: None })).await?;
    let size = |server: &TestApiServer| {
        server.get_json("", "configmaps", Some(NAMESPACE), "w-config").and_then(|c| c.pointer("/data/size").cloned())
    };
    let ready = |server: &TestApiServer| {
        server
            .get_json("test.reco.dev", "widgets", Some(NAMESPACE), "w")
            .and_then(|w| w.pointer("/status/ready").cloned())
    };
    assert!(eventually(|| size(&server) == Some(json!("2")) && ready(&server) == Some(json!(true))).await);

    widgets.patch("w", &PatchParams::default(), &Patch::Merge(json!({ "spec": { "size": 5 } }))).await?;
    assert!(eventually(|| size(&server) == Some(json!("5"))).await);

    // Someone edits the owned ConfigMap: the controller restores it.
    config_maps.patch("w-config", &PatchParams::default(), &Patch::Merge(json!({ "data": { "size": "0" } }))).await?;
    assert!(eventually(|| size(&server) == Some(json!("5"))).await);

    widgets.delete("w", &DeleteParams::default()).await?;
    assert!(eventually(|| server.get_json("", "configmaps", Some(NAMESPACE), "w-config").is_none()).await);
    driver.abort();
    Ok(())
}

#[tokio::test]
async fn namespaces_orphans_dry_runs_and_yaml_apply() -> TestResult {
    let server = TestApiServer::start().await?;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(server.client());
    let mut namespace = k8s_openapi::api::core::v1::Namespace::default();
    namespace.metadata.name = Some(NAMESPACE.to_owned());
    let created = namespaces.create(&PostParams::default(), &namespace).await?;
    assert_eq!(created.status.and_then(|s| s.phase).as_deref(), Some("Active"));
    let config_maps: Api<ConfigMap> = Api::namespaced(server.client(), NAMESPACE);

    let dry = PostParams { dry_run: true, ..PostParams::default() };
    config_maps.create(&dry, &config_map("dry", &[], &[])).await?;
    assert!(server.get_json("", "configmaps", Some(NAMESPACE), "dry").is_none());

    // Orphan propagation keeps dependents and strips their owner reference.
    let owner = config_maps.create(&PostParams::default(), &config_map("owner", &[], &[])).await?;
    let mut dependent = config_map("dependent", &[], &[]);
    dependent.metadata.owner_references = Some(vec![owner.controller_owner_ref(&()).ok_or("no owner reference")?]);
    config_maps.create(&PostParams::default(), &dependent).await?;
    config_maps.delete("owner", &DeleteParams::orphan()).await?;
    let orphan = config_maps.get("dependent").await?;
    assert_eq!(orphan.metadata.owner_references, Some(vec![]));

    // YAML apply bodies are accepted, as from kubectl.
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  k: v\n";
    let (code, applied) = raw_request(
        &server,
        "PATCH",
        "/api/v1/namespaces/reco/configmaps/from-yaml?fieldManager=kubectl",
        "application/apply-patch+yaml",
        yaml,
    )
    .await?;
    assert_eq!((code, applied.pointer("/data/k")), (201, Some(&json!("v"))));

    // Deleting the namespace removes what it holds.
    namespaces.delete(NAMESPACE, &DeleteParams::default()).await?;
    assert!(server.objects("", "configmaps").is_empty());
    Ok(())
}

#[tokio::test]
async fn expired_continue_tokens_and_cleared_failures() -> TestResult {
    let server = TestApiServer::start().await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(server.client(), NAMESPACE);
    for name in ["a", "b", "c"] {
        config_maps.create(&PostParams::default(), &config_map(name, &[], &[])).await?;
    }
    let first = config_maps.list(&ListParams::default().limit(1)).await?;
    let token = first.metadata.continue_.ok_or("no continue token")?;
    config_maps.create(&PostParams::default(), &config_map("d", &[], &[])).await?;
    server.compact_history();
    let expired = config_maps.list(&ListParams::default().limit(1).continue_token(&token)).await;
    assert_eq!(api_code(expired), Some((410, "Expired".to_owned())));

    server.inject_failures("*", "/configmaps", 500, usize::MAX);
    assert_eq!(api_code(config_maps.get("a").await), Some((500, "InternalError".to_owned())));
    server.clear_failures();
    config_maps.get("a").await?;

    let discovery = kube::Discovery::new(server.client()).run().await?;
    let (resource, capabilities) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("apps", "v1", "Deployment"))
        .ok_or("apps/v1 Deployment not discovered")?;
    assert_eq!((resource.plural.as_str(), capabilities.scope), ("deployments", kube::discovery::Scope::Namespaced));
    let (resource, _) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("apps", "v1", "StatefulSet"))
        .ok_or("apps/v1 StatefulSet not discovered")?;
    assert_eq!(resource.plural, "statefulsets");
    Ok(())
}

#[tokio::test]
async fn streaming_list_and_metadata_watchers_converge() -> TestResult {
    let server = TestApiServer::builder().bookmark_interval(Duration::from_millis(100)).start().await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(server.client(), NAMESPACE);
    config_maps.create(&PostParams::default(), &config_map("one", &[("app", "reco")], &[])).await?;

    let (reader, writer) = reflector::store();
    let streaming = watcher(config_maps.clone(), watcher::Config::default().streaming_lists());
    let driver = tokio::spawn(reflector(writer, streaming).applied_objects().for_each(|_| async {}));
    reader.wait_until_ready().await?;
    assert_eq!(reader.state().len(), 1);
    assert!(server.requests().iter().any(|r| r.is_watch() && r.path_and_query.contains("sendInitialEvents=true")));

    let (metadata_reader, metadata_writer) = reflector::store();
    let labelled = watcher::Config::default().labels("app=reco");
    let metadata_api: Api<PartialObjectMeta<ConfigMap>> = Api::namespaced(server.client(), NAMESPACE);
    let metadata = watcher(metadata_api.clone(), labelled);
    let metadata_driver = tokio::spawn(reflector(metadata_writer, metadata).applied_objects().for_each(|_| async {}));
    metadata_reader.wait_until_ready().await?;

    config_maps.create(&PostParams::default(), &config_map("two", &[("app", "reco")], &[])).await?;
    config_maps.create(&PostParams::default(), &config_map("unlabelled", &[], &[])).await?;
    assert!(eventually(|| reader.state().len() == 3 && metadata_reader.state().len() == 2).await);
    let partial = metadata_api.get("two").await?;
    assert_eq!(partial.types.map(|t| t.kind).as_deref(), Some("PartialObjectMetadata"));
    assert!(partial.metadata.uid.is_some());
    driver.abort();
    metadata_driver.abort();
    Ok(())
}

#[tokio::test]
async fn event_recorder_creates_then_patches_a_series() -> TestResult {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let (server, widgets) = widget_server().await?;
    let widget = widgets.create(&PostParams::default(), &Widget::new("w", WidgetSpec { size: 1, color: None })).await?;
    let reporter = Reporter { controller: "widget-controller".to_owned(), instance: None };
    let recorder = Recorder::new(server.client(), reporter);
    let event = Event {
        type_: EventType::Normal,
        reason: "Reconciled".to_owned(),
        note: Some("all good".to_owned()),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    recorder.publish(&event, &widget.object_ref(&())).await?;
    recorder.publish(&event, &widget.object_ref(&())).await?;
    let events = server.objects("events.k8s.io", "events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["reason"], "Reconciled");
    assert_eq!(events[0].pointer("/series/count"), Some(&json!(2)));
    let calls: Vec<String> = server.requests().iter().map(|r| format!("{} {}", r.method, r.path())).collect();
    assert!(calls.ends_with(&[
        "POST /apis/events.k8s.io/v1/namespaces/reco/events".to_owned(),
        format!(
            "PATCH /apis/events.k8s.io/v1/namespaces/reco/events/{}",
            events[0]["metadata"]["name"].as_str().unwrap_or_default()
        ),
    ]));
    Ok(())
}

/// Names follow the API server's subdomain rule: 253 characters in all, with
/// no limit on a dot-separated part.
#[tokio::test]
async fn names_are_checked_as_the_api_server_checks_them() -> TestResult {
    let server = TestApiServer::start().await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(server.client(), NAMESPACE);
    for good in ["a".repeat(70), "v2.1".to_owned(), format!("{}.b", "a".repeat(200))] {
        config_maps.create(&PostParams::default(), &config_map(&good, &[], &[])).await?;
    }
    for bad in ["Upper".to_owned(), "a..b".to_owned(), "-a".to_owned(), "a".repeat(254)] {
        let refused = config_maps.create(&PostParams::default(), &config_map(&bad, &[], &[])).await;
        assert_eq!(api_code(refused), Some((422, "Invalid".to_owned())), "{bad}");
    }
    Ok(())
}
