//! manifests/gitops/: the Argo CD Application and health checks, and the
//! Flux source, Kustomization and HelmRelease.

use reco_packaging_tests::lua::run_health_check;
use reco_packaging_tests::*;
use serde_json::{Value, json};

fn health_scripts() -> Value {
    let config_map = parse_document(&read("manifests/gitops/argocd/argocd-cm-health.yaml")).unwrap();
    assert_eq!(config_map["metadata"]["name"], "argocd-cm", "Argo CD reads health checks from argocd-cm");
    config_map["data"].clone()
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": "2026-11-24T12:00:00Z", "observedGeneration": 3})
}

fn pipeline(status: Value) -> Value {
    let mut object = parse_document(&read("manifests/samples/recommenderpipeline.yaml")).unwrap();
    object["metadata"]["generation"] = json!(3);
    if !status.is_null() {
        object["status"] = status;
    }
    object
}

fn version(status: Value) -> Value {
    let mut object = parse_document(&read("manifests/samples/modelversion.yaml")).unwrap();
    if !status.is_null() {
        object["status"] = status;
    }
    object
}

/// Statuses as reco-operator writes them; each must pass the CRD's status
/// schema, so the cases cannot drift from the real shape.
#[test]
fn argo_cd_health_follows_the_operator_status() {
    let scripts = health_scripts();
    let ready = condition("Ready", "True", "Applied", "all components serve");
    let not_degraded = condition("Degraded", "False", "AsExpected", "");
    let idle = json!({"stableVersion": "explore-v1"});
    let canary = json!({"stableVersion": "explore-v1",
                        "candidate": {"version": "explore-v2", "phase": "Canary", "step": 3, "steps": 4, "stepStartedAt": "2026-11-24T12:00:00Z"}});
    let shadow = json!({"stableVersion": "explore-v1",
                        "candidate": {"version": "explore-v2", "phase": "Shadow", "step": 1, "steps": 4, "stepStartedAt": "2026-11-24T12:00:00Z"}});
    // The common fields, plus the stable version and candidate of `versions`.
    let status = |phase: &str, weight: u8, versions: &Value, conditions: Value| {
        let mut status =
            json!({"observedGeneration": 3, "phase": phase, "canaryWeight": weight, "conditions": conditions});
        status.as_object_mut().unwrap().extend(versions.as_object().unwrap().clone());
        status
    };
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        ("new pipeline, no status yet", pipeline(Value::Null), "Progressing", "Waiting for reco-operator"),
        (
            "serving stable",
            pipeline(status("Idle", 0, &idle, json!([ready, not_degraded]))),
            "Healthy",
            "Serving stable version explore-v1",
        ),
        (
            "ready before any model version",
            pipeline(status("Idle", 0, &json!({}), json!([ready]))),
            "Healthy",
            "no ModelVersion promoted yet",
        ),
        (
            "canary at 20%",
            pipeline(status(
                "Canary",
                20,
                &canary,
                json!([ready, condition("Progressing", "True", "Canary", "step 3 of 4")]),
            )),
            "Progressing",
            "Canary explore-v2 serves 20% of users",
        ),
        (
            "shadow step",
            pipeline(status("Shadow", 0, &shadow, json!([ready]))),
            "Progressing",
            "Rolling out explore-v2 (Shadow)",
        ),
        (
            "degraded",
            pipeline(status(
                "Idle",
                0,
                &idle,
                json!([ready, condition("Degraded", "True", "RolledBack", "explore-v2 lost on CTR")]),
            )),
            "Degraded",
            "RolledBack: explore-v2 lost on CTR",
        ),
        ("paused", pipeline(status("Paused", 0, &idle, json!([ready]))), "Suspended", "paused"),
        (
            "status of an older generation",
            pipeline(
                json!({"observedGeneration": 2, "phase": "Idle", "canaryWeight": 0, "stableVersion": "explore-v1", "conditions": [ready]}),
            ),
            "Progressing",
            "observe generation 3",
        ),
        (
            "services not ready yet",
            pipeline(status("Idle", 0, &idle, json!([condition("Ready", "False", "Deploying", "gateway 1/2 ready")]))),
            "Progressing",
            "gateway 1/2 ready",
        ),
        ("version not picked up yet", version(Value::Null), "Progressing", "Waiting for reco-operator"),
        (
            "pending version",
            version(json!({"phase": "Pending", "weight": 0, "reason": "waiting for the offline gate"})),
            "Progressing",
            "Pending",
        ),
        (
            "canary version",
            version(json!({"phase": "Canary", "weight": 20, "ctr": 0.051, "reason": "step 3 of 4"})),
            "Progressing",
            "Canary at 20%",
        ),
        (
            "stable version",
            version(json!({"phase": "Stable", "weight": 100, "ctr": 0.052, "reason": "promoted"})),
            "Healthy",
            "serving 100%",
        ),
        (
            "retired version",
            version(json!({"phase": "Retired", "weight": 0, "reason": "replaced by explore-v3"})),
            "Healthy",
            "Retired",
        ),
        (
            "rolled back version",
            version(
                json!({"phase": "RolledBack", "weight": 0, "ctr": 0.031, "reason": "CTR below stable at 95% confidence"}),
            ),
            "Degraded",
            "RolledBack: CTR below stable",
        ),
        (
            "failed version",
            version(json!({"phase": "Failed", "weight": 0, "reason": "artifact not found"})),
            "Degraded",
            "Failed: artifact not found",
        ),
    ];
    let crds = reco_crds();
    for (name, object, status, message) in cases {
        let problems = validate_custom_resource(&crds, &object, None);
        assert!(problems.is_empty(), "{name}: the sample status does not match the CRD: {problems:#?}");
        let key = format!("resource.customizations.health.reco.seed.dev_{}", kind(&object));
        let script = scripts[&key].as_str().unwrap_or_else(|| panic!("no {key} in argocd-cm"));
        let health = run_health_check(script, &object).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(health.status, status, "{name}: {health:?}");
        assert!(health.message.contains(message), "{name}: message {:?} lacks {message:?}", health.message);
    }
}

#[test]
fn argo_cd_application_installs_the_chart_with_valid_values() {
    let application = parse_document(&read("manifests/gitops/argocd/application.yaml")).unwrap();
    assert_eq!(application["apiVersion"], "argoproj.io/v1alpha1");
    assert_eq!(application["kind"], "Application");
    let source = &application["spec"]["source"];
    let path = source["path"].as_str().unwrap();
    assert!(repo_path(path).join("Chart.yaml").is_file(), "source.path {path} is not a chart");
    assert!(
        application["metadata"].get("finalizers").is_none(),
        "a resources finalizer would delete the CRDs with the Application"
    );
    let sync_options: Vec<&str> =
        application["spec"]["syncPolicy"]["syncOptions"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(sync_options.contains(&"ServerSideApply=true"), "the pipeline CRD needs server-side apply");
    let rendered =
        helm_template_with_values(&source["helm"]["valuesObject"]).unwrap_or_else(|e| panic!("valuesObject: {e:#}"));
    assert!(rendered.contains("kind: PrometheusRule"), "the Application's values reach the chart");
}

#[test]
fn flux_objects_point_at_what_the_repository_holds() {
    let source = parse_document(&read("manifests/gitops/flux/gitrepository.yaml")).unwrap();
    assert_eq!(source["apiVersion"], "source.toolkit.fluxcd.io/v1");
    assert_eq!(source["kind"], "GitRepository");
    let source_ref = |object: &Value| {
        let reference = &object["spec"]["sourceRef"];
        assert_eq!(reference["kind"], "GitRepository");
        assert_eq!(reference["name"], source["metadata"]["name"]);
        let namespace = reference.get("namespace").unwrap_or(&object["metadata"]["namespace"]);
        assert_eq!(namespace, &source["metadata"]["namespace"]);
    };

    let kustomization = parse_document(&read("manifests/gitops/flux/kustomization-flux.yaml")).unwrap();
    assert_eq!(kustomization["apiVersion"], "kustomize.toolkit.fluxcd.io/v1");
    assert_eq!(kustomization["kind"], "Kustomization");
    source_ref(&kustomization);
    let path = kustomization["spec"]["path"].as_str().unwrap().trim_start_matches("./");
    let rendered = kustomize(path).unwrap_or_else(|e| panic!("the Flux Kustomization's path {path}: {e:#}"));
    assert!(rendered.contains("kind: Deployment"));

    let release = parse_document(&read("manifests/gitops/flux/helmrelease.yaml")).unwrap();
    assert_eq!(release["apiVersion"], "helm.toolkit.fluxcd.io/v2");
    assert_eq!(release["kind"], "HelmRelease");
    let chart = &release["spec"]["chart"]["spec"];
    source_ref(&json!({"spec": {"sourceRef": chart["sourceRef"]}, "metadata": release["metadata"]}));
    let chart_path = chart["chart"].as_str().unwrap().trim_start_matches("./");
    assert!(repo_path(chart_path).join("Chart.yaml").is_file(), "chart {chart_path} is not a chart");
    assert_eq!(
        release["spec"]["upgrade"]["crds"], "CreateReplace",
        "Flux upgrades the CRDs that helm upgrade leaves alone"
    );
    helm_template_with_values(&release["spec"]["values"]).unwrap_or_else(|e| panic!("HelmRelease values: {e:#}"));
}
