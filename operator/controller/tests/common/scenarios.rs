//! The operator scenarios, written once against [`Scenario`] so that they
//! run on the in-process API test double (`tests/scenarios.rs`) and on a
//! real cluster (`tests/real_cluster.rs`).

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use reco_api::ModelVersion;
use reco_api::{PipelinePhase, VersionPhase};
use reco_contracts::RoutingTable;
use serde_json::json;

use super::{Operator, Scenario, fast_pipeline, model_version};

/// A pipeline with v1 stable and v2 held in a one-hour shadow step.
async fn v1_stable_and_v2_in_a_long_shadow(s: &Scenario) -> Operator {
    let mut pipeline = fast_pipeline("explore");
    pipeline["spec"]["rollout"]["steps"][0]["shadow"]["duration"] = json!("1h");
    s.create_pipeline(pipeline).await;
    let operator = Operator::start(s).await;
    s.metrics.set_ctr("v1", 0.05);
    s.create_version(model_version("explore", "v1")).await;
    s.wait_for_phase("v1", VersionPhase::Stable).await;
    s.create_version(model_version("explore", "v2")).await;
    s.wait_for_phase("v2", VersionPhase::Shadow).await;
    operator
}

pub async fn a_pipeline_creates_its_objects_and_status(s: &Scenario) {
    let _operator = Operator::start(s).await;
    let pipeline = s.create_pipeline(fast_pipeline("explore")).await;

    let ready = s
        .eventually("pipeline status written", || async {
            let p = s.pipelines().get("explore").await.ok()?;
            let status = p.status?;
            (status.observed_generation == p.metadata.generation).then_some(status)
        })
        .await;
    let ready_condition = ready.conditions.iter().find(|c| c.type_ == "Ready").expect("Ready condition");
    assert_eq!((ready_condition.status.as_str(), ready_condition.reason.as_str()), ("False", "NoStableVersion"));
    assert_eq!(ready.phase, Some(PipelinePhase::Idle));

    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.namespace);
    let gateway = s.eventually("gateway deployment", || async { deployments.get("explore-gateway").await.ok() }).await;
    let owner = &gateway.metadata.owner_references.as_ref().expect("owner reference")[0];
    assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("RecommenderPipeline", pipeline.uid().unwrap().as_str()));
    assert_eq!(owner.controller, Some(true));
    assert_eq!(gateway.labels().get("app.kubernetes.io/managed-by").map(String::as_str), Some("reco-operator"));
    assert_eq!(gateway.spec.as_ref().unwrap().replicas, Some(2));
    let container = &gateway.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
    let security = container.security_context.as_ref().expect("securityContext");
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert!(container.resources.as_ref().and_then(|r| r.limits.as_ref()).is_some(), "limits set");
    assert!(container.readiness_probe.is_some() && container.liveness_probe.is_some());

    // One token Secret shared by every gateway replica, created once with a random key.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(s.client.clone(), &s.namespace);
    let token = s.eventually("token secret", || async { secrets.get("explore-token").await.ok() }).await;
    let key = |secret: &k8s_openapi::api::core::v1::Secret| {
        let data = secret.data.clone().unwrap_or_default();
        let string_data = secret.string_data.clone().unwrap_or_default();
        data.get("token-key")
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .or(string_data.get("token-key").cloned())
    };
    assert_eq!(key(&token).expect("token-key entry").len(), 64, "32 random bytes, hex");
    assert_eq!(token.metadata.owner_references.as_ref().expect("owner")[0].uid, pipeline.uid().unwrap());
    let volumes = gateway.spec.as_ref().unwrap().template.spec.as_ref().unwrap().volumes.clone().unwrap_or_default();
    assert!(volumes.iter().any(|v| v.secret.as_ref().and_then(|x| x.secret_name.as_deref()) == Some("explore-token")));

    let services: Api<Service> = Api::namespaced(s.client.clone(), &s.namespace);
    assert!(services.get("explore-gateway").await.is_ok());
    assert!(services.get("explore-features").await.is_ok());
    // Features keep their snapshot and event log on a volume per pod.
    let statefulsets: Api<StatefulSet> = Api::namespaced(s.client.clone(), &s.namespace);
    let features = statefulsets.get("explore-features").await.expect("features StatefulSet");
    assert_eq!(features.metadata.owner_references.as_ref().expect("owner")[0].uid, pipeline.uid().unwrap());
    let claims = features.spec.as_ref().unwrap().volume_claim_templates.clone().unwrap_or_default();
    assert_eq!(claims.iter().filter_map(|c| c.metadata.name.as_deref()).collect::<Vec<_>>(), ["data"]);
    assert!(deployments.get("explore-features").await.is_err(), "no features Deployment");

    // Only the operator's field manager owns what it applied (the status is the pods' stand-in's).
    let managers: Vec<String> = gateway
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .filter(|m| m != super::PODS_READY_MANAGER)
        .collect();
    assert_eq!(managers, ["reco-operator"]);
}

/// An operator upgrade from the features Deployment (on an emptyDir) to the
/// StatefulSet: the Deployment goes, so that one kind of pod takes events.
pub async fn an_upgrade_replaces_the_features_deployment(s: &Scenario) {
    let pipeline = s.create_pipeline(fast_pipeline("explore")).await;
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.namespace);
    let labels = json!({
        "app.kubernetes.io/name": "reco", "app.kubernetes.io/instance": "explore",
        "app.kubernetes.io/component": "features", "reco.seed.dev/pipeline": "explore",
        "app.kubernetes.io/managed-by": "reco-operator",
    });
    let legacy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "explore-features", "labels": labels, "ownerReferences": [{
            "apiVersion": "reco.seed.dev/v1alpha1", "kind": "RecommenderPipeline", "name": "explore",
            "uid": pipeline.uid().unwrap(), "controller": true,
        }]},
        "spec": {
            "selector": {"matchLabels": {"reco.seed.dev/pipeline": "explore", "app.kubernetes.io/component": "features"}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "features", "image": "ghcr.io/reco-seed/reco:0.1.0"}]},
            },
        },
    }))
    .unwrap();
    deployments.create(&PostParams::default(), &legacy).await.unwrap();
    let _operator = Operator::start(s).await;
    let statefulsets: Api<StatefulSet> = Api::namespaced(s.client.clone(), &s.namespace);
    s.eventually("the features StatefulSet", || async { statefulsets.get("explore-features").await.ok() }).await;
    s.eventually("the features Deployment deleted", || async {
        deployments.get("explore-features").await.is_err().then_some(())
    })
    .await;
    assert!(deployments.get("explore-gateway").await.is_ok(), "other Deployments stay");
}

pub async fn a_better_version_is_promoted_through_every_step(s: &Scenario) {
    let _operator = Operator::start(s).await;
    s.create_pipeline(fast_pipeline("explore")).await;
    s.metrics.set_ctr("v1", 0.05);
    s.metrics.set_ctr("v2", 0.055);
    s.create_version(model_version("explore", "v1")).await;
    s.wait_for_phase("v1", VersionPhase::Stable).await;
    assert_eq!(s.routing("explore").await.versions.len(), 1);

    s.create_version(model_version("explore", "v2")).await;
    s.wait_for_phase("v2", VersionPhase::Shadow).await;
    let shadow_routing = s.routing("explore").await;
    assert_eq!(shadow_routing.shadow.as_deref(), Some("v2"));
    s.wait_for_phase("v2", VersionPhase::Canary).await;
    s.wait_for_phase("v2", VersionPhase::Stable).await;
    s.wait_for_phase("v1", VersionPhase::Retired).await;

    let routing = s.routing("explore").await;
    assert_eq!(routing.versions.iter().map(|v| (v.name.as_str(), v.weight)).collect::<Vec<_>>(), [("v2", 100)]);
    // The pipeline's status is written after the versions' phases: a genuine API server can show v1 retired
    // before it (seen once in a fresh-clone CI run).
    let status = s
        .eventually("the pipeline's status naming v2 stable", || async {
            let status = s.pipelines().get("explore").await.ok()?.status?;
            (status.stable_version.as_deref() == Some("v2")).then_some(status)
        })
        .await;
    assert!(status.candidate.is_none());
    let history: Vec<(String, VersionPhase)> = status.history.iter().map(|h| (h.version.clone(), h.to)).collect();
    assert!(history.contains(&("v2".into(), VersionPhase::Stable)), "{history:?}");
    // Every canary weight was served before promotion, in increasing order.
    assert_eq!(s.routing_log.canary_weights("v2"), [10, 50]);
    // The retired version's pods are gone; the new stable's serve.
    s.eventually("v1 objects removed", || async {
        let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.namespace);
        deployments.get("explore-retrieval-v1").await.is_err().then_some(())
    })
    .await;
    assert!(s.events_with_reason("Promoted").await >= 1);
}

pub async fn a_worse_version_is_rolled_back_and_stable_keeps_serving(s: &Scenario) {
    let _operator = Operator::start(s).await;
    s.create_pipeline(fast_pipeline("explore")).await;
    s.metrics.set_ctr("v1", 0.05);
    s.metrics.set_ctr("v3", 0.01);
    s.create_version(model_version("explore", "v1")).await;
    s.wait_for_phase("v1", VersionPhase::Stable).await;
    s.create_version(model_version("explore", "v3")).await;
    let rolled_back = s.wait_for_phase("v3", VersionPhase::RolledBack).await;
    let reason = rolled_back.status.unwrap().reason.unwrap_or_default();
    assert!(!reason.is_empty());

    let routing = s.routing("explore").await;
    assert_eq!(routing.versions.iter().map(|v| (v.name.as_str(), v.weight)).collect::<Vec<_>>(), [("v1", 100)]);
    assert_eq!(s.version("v1").await.status.unwrap().phase, Some(VersionPhase::Stable));
    // The version's status is written before the pipeline's: the pipeline says so a moment later.
    s.eventually("the pipeline Degraded by the rollback", || async {
        let p = s.pipelines().get("explore").await.ok()?;
        let degraded = p.status?.conditions.into_iter().find(|c| c.type_ == "Degraded")?;
        (degraded.status == "True" && degraded.reason == "RolledBack").then_some(())
    })
    .await;
    assert!(s.events_with_reason("RolledBack").await >= 1);
    // Stable never stopped being routed while the canary ran.
    assert!(s.routing_log.always_serves("v1"));
}

pub async fn an_operator_restart_mid_canary_resumes_where_it_was(s: &Scenario) {
    let mut pipeline = fast_pipeline("explore");
    // A long first canary step, so the restart lands inside it.
    pipeline["spec"]["rollout"]["steps"][1]["canary"]["minImpressions"] = json!(150_000);
    s.create_pipeline(pipeline).await;
    s.metrics.set_ctr("v1", 0.05);
    s.metrics.set_ctr("v2", 0.055);
    let operator = Operator::start(s).await;
    s.create_version(model_version("explore", "v1")).await;
    s.wait_for_phase("v1", VersionPhase::Stable).await;
    s.create_version(model_version("explore", "v2")).await;
    s.wait_for_phase("v2", VersionPhase::Canary).await;
    operator.stop().await;

    let before = s.pipelines().get("explore").await.unwrap().status.unwrap();
    let candidate = before.candidate.clone().expect("a canary in flight");
    let _operator = Operator::start(s).await;
    // The new operator continues the stored step: same version, same or later step, same step start.
    let resumed = s
        .eventually("the restarted operator writes status", || async {
            let status = s.pipelines().get("explore").await.ok()?.status?;
            ((&status.candidate, &status.history) != (&before.candidate, &before.history)).then_some(status.candidate)
        })
        .await;
    if let Some(c) = &resumed {
        assert_eq!(c.version, candidate.version);
        assert!(c.step >= candidate.step);
        if c.step == candidate.step {
            assert_eq!(c.step_started_at, candidate.step_started_at);
        }
    }
    s.wait_for_phase("v2", VersionPhase::Stable).await;
}

pub async fn api_errors_and_conflicts_converge(s: &Scenario) {
    s.server().inject_failures("PATCH", "/deployments/", 500, 2);
    s.server().inject_failures("PATCH", "/status", 409, 1);
    // 500s, not 503s: kube-client retries 503 itself, the operator must handle these.
    s.server().inject_failures("PATCH", "/configmaps/", 500, 1);
    let _operator = Operator::start(s).await;
    s.create_pipeline(fast_pipeline("explore")).await;
    s.metrics.set_ctr("v1", 0.05);
    s.create_version(model_version("explore", "v1")).await;
    s.wait_for_phase("v1", VersionPhase::Stable).await;
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.namespace);
    s.eventually("objects applied after the errors", || async { deployments.get("explore-retrieval-v1").await.ok() })
        .await;
    let p = s.pipelines().get("explore").await.unwrap();
    let ready = p.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.status, "True");
}

pub async fn an_invalid_spec_is_reported_and_changes_nothing(s: &Scenario) {
    let _operator = Operator::start(s).await;
    let mut pipeline = fast_pipeline("broken");
    pipeline["spec"]["rollout"]["steps"] = json!([
        {"canary": {"weight": 50, "minImpressions": 10, "maxDuration": "1m"}},
        {"canary": {"weight": 20, "minImpressions": 10, "maxDuration": "1m"}},
    ]);
    if s.enforces_schema() {
        // A real API server refuses it at admission with the CRD's CEL rule.
        let created = s.pipelines().create(&Default::default(), &serde_json::from_value(pipeline).unwrap()).await;
        let Err(kube::Error::Api(status)) = created else { panic!("an invalid spec was admitted: {created:?}") };
        assert_eq!(status.code, 422);
        assert!(status.message.contains("canary weights must be strictly increasing"), "{}", status.message);
        return;
    }
    // Where the schema is not enforced (the test double, or a cluster whose
    // CRD predates a rule), the operator must catch it itself.
    s.create_pipeline(pipeline).await;
    let condition = s
        .eventually("InvalidSpec reported", || async {
            let status = s.pipelines().get("broken").await.ok()?.status?;
            status.conditions.into_iter().find(|c| c.type_ == "Ready" && c.reason == "InvalidSpec")
        })
        .await;
    assert_eq!(condition.status, "False");
    assert!(condition.message.contains("spec.rollout.steps[1].canary.weight"), "{}", condition.message);
    assert_eq!(s.events_with_reason("InvalidSpec").await, 1);
    let configmaps: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.namespace);
    assert!(configmaps.get("broken-routing").await.is_err(), "nothing applied for an invalid spec");
}

/// Names Kubernetes accepts for the custom resources (DNS subdomains) but
/// that cannot name a Service or be a label value are refused before any
/// object is written, naming the field; stable serves on.
pub async fn invalid_names_are_refused_before_anything_is_written(s: &Scenario) {
    let _operator = Operator::start(s).await;
    s.create_pipeline(fast_pipeline("ex.plore")).await;
    let condition = s
        .eventually("InvalidSpec for the pipeline name", || async {
            let status = s.pipelines().get("ex.plore").await.ok()?.status?;
            status.conditions.into_iter().find(|c| c.type_ == "Ready" && c.reason == "InvalidSpec")
        })
        .await;
    assert_eq!(condition.status, "False");
    assert!(condition.message.starts_with("metadata.name: "), "{}", condition.message);

    s.create_pipeline(fast_pipeline("explore")).await;
    s.metrics.set_ctr("v1", 0.05);
    s.create_version(model_version("explore", "v1")).await;
    s.wait_for_phase("v1", VersionPhase::Stable).await;
    let long = "v".repeat(70);
    for bad in ["v2.1", long.as_str()] {
        s.create_version(model_version("explore", bad)).await;
        let status = s
            .eventually(&format!("the status of version {bad}"), || async {
                let status = s.versions().get(bad).await.ok()?.status?;
                status.reason.as_ref().is_some_and(|r| r.contains("metadata.name")).then_some(status)
            })
            .await;
        assert_eq!(status.phase, Some(VersionPhase::Pending), "never rolled out: {status:?}");
    }
    assert_eq!(s.version("v1").await.status.unwrap().phase, Some(VersionPhase::Stable));
    let routing = s.routing("explore").await;
    assert_eq!(routing.versions.iter().map(|v| (v.name.as_str(), v.weight)).collect::<Vec<_>>(), [("v1", 100)]);
    assert_eq!(routing.shadow, None);
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.namespace);
    let mut names: Vec<String> =
        deployments.list(&Default::default()).await.unwrap().items.iter().map(|d| d.name_any()).collect();
    names.sort();
    assert_eq!(names, ["explore-gateway", "explore-ranking-v1", "explore-retrieval-v1"], "nothing for the bad names");
    let configmaps: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.namespace);
    assert!(configmaps.get("ex.plore-routing").await.is_err(), "nothing applied for an invalid pipeline name");
}

pub async fn a_version_that_leaves_the_pipeline_loses_its_objects(s: &Scenario) {
    let _operator = v1_stable_and_v2_in_a_long_shadow(s).await;
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.namespace);
    s.eventually("shadow pods", || async { deployments.get("explore-ranking-v2").await.ok() }).await;

    s.versions().delete("v2", &DeleteParams::default()).await.unwrap();
    s.eventually("v2 objects removed", || async {
        let gone = deployments.get("explore-ranking-v2").await.is_err()
            && deployments.get("explore-retrieval-v2").await.is_err();
        gone.then_some(())
    })
    .await;
    let routing = s.routing("explore").await;
    assert_eq!(routing.shadow, None);
    assert!(deployments.get("explore-retrieval-v1").await.is_ok(), "stable keeps its pods");
}

/// A rolled-back version's Services and Deployments outlive the routing
/// that named it by `scaleDownDelay`, for gateways that have not reloaded it
/// yet, and then go.
pub async fn a_version_that_left_the_routing_drains_before_its_objects_go(s: &Scenario) {
    let mut pipeline = fast_pipeline("explore");
    pipeline["spec"]["rollout"]["steps"][0]["shadow"]["duration"] = json!("1h");
    pipeline["spec"]["rollout"]["scaleDownDelay"] = json!("4s");
    s.create_pipeline(pipeline).await;
    let _operator = Operator::start(s).await;
    s.metrics.set_ctr("v1", 0.05);
    s.create_version(model_version("explore", "v1")).await;
    s.wait_for_phase("v1", VersionPhase::Stable).await;
    s.create_version(model_version("explore", "v2")).await;
    s.wait_for_phase("v2", VersionPhase::Shadow).await;
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.namespace);
    let services: Api<Service> = Api::namespaced(s.client.clone(), &s.namespace);
    s.eventually("shadow pods", || async { deployments.get("explore-ranking-v2").await.ok() }).await;

    annotate(s, "v2", json!({"reco.seed.dev/abort": "true"})).await;
    s.wait_for_phase("v2", VersionPhase::RolledBack).await;
    assert_eq!(s.routing("explore").await.shadow, None, "the routing no longer names v2");
    let gone_at = s
        .eventually("v2 objects removed after the delay", || async {
            let gone = deployments.get("explore-ranking-v2").await.is_err()
                && deployments.get("explore-retrieval-v2").await.is_err()
                && services.get("explore-ranking-v2").await.is_err()
                && services.get("explore-retrieval-v2").await.is_err();
            gone.then(jiff::Timestamp::now)
        })
        .await;
    let status = s.pipelines().get("explore").await.unwrap().status.unwrap();
    let left = status.history.iter().rev().find(|t| t.version == "v2" && t.to == VersionPhase::RolledBack).unwrap();
    let kept = gone_at.duration_since(left.time.0);
    assert!(kept >= jiff::SignedDuration::from_secs(4), "v2's objects went {kept:?} after it left the routing");
    assert!(deployments.get("explore-retrieval-v1").await.is_ok(), "stable keeps its pods");
}

pub async fn the_abort_annotation_rolls_back_at_once(s: &Scenario) {
    let _operator = v1_stable_and_v2_in_a_long_shadow(s).await;
    annotate(s, "v2", json!({"reco.seed.dev/abort": "true"})).await;
    let aborted = s.wait_for_terminal("v2").await;
    assert!(matches!(aborted, VersionPhase::RolledBack | VersionPhase::Failed), "{aborted:?}");
    assert_eq!(s.version("v1").await.status.unwrap().phase, Some(VersionPhase::Stable));
}

/// A status restored without its rollout (the object re-created, a backup
/// without status, an older operator's status) is rebuilt from the
/// versions' own statuses: stable stays stable, an ended version stays ended.
pub async fn a_lost_pipeline_status_is_rebuilt_from_the_versions(s: &Scenario) {
    let operator = v1_stable_and_v2_in_a_long_shadow(s).await;
    annotate(s, "v2", json!({"reco.seed.dev/abort": "true"})).await;
    let ended = s.wait_for_terminal("v2").await;
    // Without the annotation nothing but the remembered outcome keeps v2 from rolling out again.
    annotate(s, "v2", json!({})).await;
    operator.stop().await;
    let cleared = Patch::Merge(json!({"status": null}));
    s.pipelines().patch_status("explore", &PatchParams::default(), &cleared).await.unwrap();
    assert!(s.pipelines().get("explore").await.unwrap().status.is_none(), "the status is gone");

    let _operator = Operator::start(s).await;
    let status =
        s.eventually("the status is written again", || async { s.pipelines().get("explore").await.ok()?.status }).await;
    assert_eq!(status.stable_version.as_deref(), Some("v1"), "{status:?}");
    assert!(status.candidate.is_none(), "v2 must not roll out again: {status:?}");
    assert!(status.ended_versions.iter().any(|e| e.version == "v2" && e.phase == ended), "{status:?}");
    assert_eq!(s.version("v2").await.status.unwrap().phase, Some(ended));
    assert_eq!(s.version("v1").await.status.unwrap().phase, Some(VersionPhase::Stable));
    assert!(s.routing("explore").await.shadow.is_none());
}

/// After a restart the pipelines may be listed before the ModelVersions:
/// the operator decides nothing until every cache is filled, instead of
/// taking the unlisted candidate for a deleted one. The lists fail through
/// injected errors on the test double, through RBAC on a real server.
pub async fn a_restart_waits_for_every_cache(s: &Scenario) {
    let operator = v1_stable_and_v2_in_a_long_shadow(s).await;
    operator.stop().await;
    let before = s.pipelines().get("explore").await.unwrap().status.unwrap();
    let (client, scope) = s.operator_without_version_lists().await;
    let denied = Api::<ModelVersion>::namespaced(client.clone(), &s.namespace).list(&Default::default()).await;
    assert!(denied.is_err(), "the operator's client can list ModelVersions");
    let _operator = Operator::start_as(s, client, scope);
    s.version_lists_failed().await;
    let during = s.pipelines().get("explore").await.unwrap().status.unwrap();
    assert_eq!(during, before, "nothing was decided without the ModelVersions");
    s.allow_version_lists().await;
    // The restarted operator reconciles again: pausing the pipeline shows in its status.
    let pause = Patch::Merge(json!({"spec": {"paused": true}}));
    s.pipelines().patch("explore", &PatchParams::default(), &pause).await.unwrap();
    s.eventually("the paused pipeline reported once the versions are listed", || async {
        let status = s.pipelines().get("explore").await.ok()?.status?;
        (status.phase == Some(PipelinePhase::Paused)).then_some(())
    })
    .await;
    assert_eq!(s.versions().get("v2").await.unwrap().status.unwrap().phase, Some(VersionPhase::Shadow));
    let after = s.pipelines().get("explore").await.unwrap().status.unwrap();
    assert_eq!(after.candidate, before.candidate, "the rollout goes on from the same step");
    assert!(!after.history.iter().any(|t| t.reason.contains("deleted")), "{:?}", after.history);
    let v1 = s.versions().get("v1").await.unwrap().status.unwrap();
    assert_eq!(v1.phase, Some(VersionPhase::Stable), "stable serves on");
}

async fn annotate(s: &Scenario, version: &str, annotations: serde_json::Value) {
    let mut object = serde_json::to_value(s.version(version).await).unwrap();
    object["metadata"]["annotations"] = annotations;
    let object: ModelVersion = serde_json::from_value(object).unwrap();
    s.versions().replace(version, &PostParams::default(), &object).await.unwrap();
}

pub async fn a_paused_pipeline_does_not_advance(s: &Scenario) {
    let mut pipeline = fast_pipeline("explore");
    pipeline["spec"]["paused"] = json!(true);
    s.create_pipeline(pipeline).await;
    let _operator = Operator::start(s).await;
    s.metrics.set_ctr("v1", 0.05);
    s.create_version(model_version("explore", "v1")).await;
    let p = s
        .eventually("paused status", || async {
            let status = s.pipelines().get("explore").await.ok()?.status?;
            (status.phase == Some(PipelinePhase::Paused)).then_some(status)
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let v1 = s.version("v1").await;
    assert_ne!(v1.status.and_then(|st| st.phase), Some(VersionPhase::Stable), "no transition while paused: {p:?}");
}

pub async fn routing_configmap_is_what_gateways_parse(s: &Scenario) {
    let _operator = Operator::start(s).await;
    s.create_pipeline(fast_pipeline("explore")).await;
    s.metrics.set_ctr("v1", 0.05);
    s.create_version(model_version("explore", "v1")).await;
    s.wait_for_phase("v1", VersionPhase::Stable).await;
    let table: RoutingTable = s.routing("explore").await;
    table.validate().expect("a valid routing table");
    assert_eq!(table.pipeline, "explore");
    assert_eq!(table.salt, "explore");
}

pub async fn missing_metrics_hold_the_weight_and_never_promote(s: &Scenario) {
    s.create_pipeline(fast_pipeline("explore")).await;
    s.metrics.set_ctr("v1", 0.05);
    s.metrics.set_ctr("v2", 0.055);
    let _operator = Operator::start(s).await;
    s.create_version(model_version("explore", "v1")).await;
    s.wait_for_phase("v1", VersionPhase::Stable).await;
    s.metrics.set_unavailable(Some("gateway unreachable"));
    s.create_version(model_version("explore", "v2")).await;
    s.wait_for_phase("v2", VersionPhase::Canary).await;

    let inconclusive = s
        .eventually("an Inconclusive look", || async {
            let status = s.pipelines().get("explore").await.ok()?.status?;
            let analysis = status.last_analysis?;
            (analysis.verdict == reco_api::status::Verdict::Inconclusive).then_some(analysis)
        })
        .await;
    assert!(inconclusive.message.contains("gateway unreachable"), "{}", inconclusive.message);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = s.version("v2").await.status.unwrap();
    assert_eq!((held.phase, held.weight), (Some(VersionPhase::Canary), 10), "weight held while metrics are missing");

    s.metrics.set_unavailable(None);
    s.wait_for_phase("v2", VersionPhase::Stable).await;
}

pub async fn drift_on_owned_objects_is_corrected(s: &Scenario) {
    let _operator = Operator::start(s).await;
    s.create_pipeline(fast_pipeline("explore")).await;
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.namespace);
    s.eventually("gateway deployment", || async { deployments.get("explore-gateway").await.ok() }).await;
    // Someone scales the gateway by hand; the pipeline says 2 replicas.
    let patch = kube::api::Patch::Merge(json!({"spec": {"replicas": 7}}));
    deployments.patch("explore-gateway", &kube::api::PatchParams::default(), &patch).await.unwrap();
    s.eventually("replicas restored", || async {
        let d = deployments.get("explore-gateway").await.ok()?;
        (d.spec?.replicas == Some(2)).then_some(())
    })
    .await;
}

pub async fn a_reconcile_that_changes_nothing_applies_nothing(s: &Scenario) {
    let _operator = Operator::start(s).await;
    s.create_pipeline(fast_pipeline("explore")).await;
    s.metrics.set_ctr("v1", 0.05);
    s.create_version(model_version("explore", "v1")).await;
    s.wait_for_phase("v1", VersionPhase::Stable).await;
    // Let the burst of watch events from the first applies settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.server().clear_requests();
    // An annotation on the version triggers a reconcile that has nothing to change.
    let patch = kube::api::Patch::Merge(json!({"metadata": {"annotations": {"team": "explore"}}}));
    s.versions().patch("v1", &kube::api::PatchParams::default(), &patch).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let writes: Vec<String> = s
        .server()
        .requests()
        .iter()
        .filter(|r| r.method != "GET" && !r.path().contains("/events") && !r.path().ends_with("/modelversions/v1"))
        .map(ToString::to_string)
        .collect();
    assert!(writes.is_empty(), "a reconcile with nothing to change wrote: {writes:?}");
}

/// The test double plays the Deployment controller: it marks the candidate's
/// retrieval Deployment as stuck, as a real cluster does when the image cannot
/// be pulled or the artifact cannot be loaded.
pub async fn a_version_whose_pods_cannot_start_fails_and_stable_serves_on(s: &Scenario) {
    let _operator = v1_stable_and_v2_in_a_long_shadow(s).await;
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.namespace);
    s.eventually("v2 retrieval pods", || async { deployments.get("explore-retrieval-v2").await.ok() }).await;

    let stuck = json!({"status": {"conditions": [{
        "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
        "message": "ReplicaSet \"explore-retrieval-v2-7d9\" has timed out progressing: ImagePullBackOff",
    }]}});
    deployments
        .patch_status("explore-retrieval-v2", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(stuck))
        .await
        .unwrap();
    let failed = s.wait_for_phase("v2", VersionPhase::Failed).await;
    let reason = failed.status.unwrap().reason.unwrap_or_default();
    assert!(reason.contains("explore-retrieval-v2") && reason.contains("ImagePullBackOff"), "{reason}");
    assert_eq!(
        s.routing("explore").await.versions.iter().map(|v| (v.name.clone(), v.weight)).collect::<Vec<_>>(),
        [("v1".to_owned(), 100)]
    );
    assert!(deployments.get("explore-retrieval-v1").await.is_ok(), "stable keeps its pods");
}

/// A version's pods start before its rollout: while they are not ready, it
/// waits `Pending` (no shadow mirror, no users), and its shadow step starts
/// once they are. Found by the end-to-end demo, where mirrored requests to
/// pods still loading their artifacts failed v2's shadow guardrail.
pub async fn a_version_takes_traffic_only_once_its_pods_are_ready(s: &Scenario) {
    s.create_pipeline(fast_pipeline("explore")).await;
    let _operator = Operator::start(s).await;
    s.metrics.set_ctr("v1", 0.05);
    s.create_version(model_version("explore", "v1")).await;
    s.wait_for_phase("v1", VersionPhase::Stable).await;

    s.hold_pods("explore-ranking-v2");
    s.create_version(model_version("explore", "v2")).await;
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.namespace);
    for name in ["explore-retrieval-v2", "explore-ranking-v2"] {
        s.eventually(&format!("{name} made before the rollout"), || async { deployments.get(name).await.ok() }).await;
    }
    let waiting = s
        .eventually("v2 waiting for its pods", || async {
            let status = s.version("v2").await.status?;
            status.reason.filter(|r| r.contains("waiting for its pods")).map(|_| status.phase)
        })
        .await;
    assert_eq!(waiting, Some(VersionPhase::Pending));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(s.version("v2").await.status.unwrap().phase, Some(VersionPhase::Pending), "still waiting");
    assert_eq!(s.routing("explore").await.shadow, None, "no mirrored requests to pods that are not ready");

    s.release_pods("explore-ranking-v2");
    s.wait_for_phase("v2", VersionPhase::Shadow).await;
    assert_eq!(s.routing("explore").await.shadow.as_deref(), Some("v2"));
}
