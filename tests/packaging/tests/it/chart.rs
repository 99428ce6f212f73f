//! charts/reco rendered with `helm template`.

use std::collections::BTreeSet;
use std::process::Command;

use reco_packaging_tests::kinds::{check_builtin, check_workload};
use reco_packaging_tests::*;
use serde_json::{Value, json};

/// The values files the chart is rendered with, relative to the chart.
const VALUES_CASES: &[(&str, &[&str])] =
    &[("default", &[]), ("minimal", &["ci/minimal-values.yaml"]), ("full", &["ci/full-values.yaml"])];

fn render(values_files: &[&str]) -> Vec<Value> {
    let yaml = helm_template(values_files, &[]).unwrap_or_else(|e| panic!("{e:#}"));
    parse_documents(&yaml).unwrap()
}

fn deployment(objects: &[Value]) -> &Value {
    let deployments: Vec<&Value> = objects_of_kind(objects, "Deployment").collect();
    assert_eq!(deployments.len(), 1, "the chart renders one Deployment");
    deployments[0]
}

fn env(deployment: &Value) -> std::collections::BTreeMap<String, Value> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (e["name"].as_str().unwrap().to_owned(), e.get("value").cloned().unwrap_or_else(|| e["valueFrom"].clone()))
        })
        .collect()
}

#[test]
fn chart_and_manifest_crds_are_the_repository_crds() {
    let names = |dir: &str| -> BTreeSet<String> {
        std::fs::read_dir(repo_path(dir)).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect()
    };
    let expected = names("crds");
    assert_eq!(expected.len(), 2, "crds/ holds the two reco CRDs");
    for copy in ["charts/reco/crds", "manifests/base/crds"] {
        assert_eq!(names(copy), expected, "{copy} must hold the same files as crds/: run `make crds`");
        for name in &expected {
            similar_asserts::assert_eq!(
                read(&format!("{copy}/{name}")),
                read(&format!("crds/{name}")),
                "{copy}/{name} differs from crds/{name}: run `make crds`"
            );
        }
    }
}

#[test]
fn helm_lint_strict_passes_with_every_values_file() {
    let chart = repo_path("charts/reco");
    for (case, files) in VALUES_CASES {
        let mut command = Command::new(k8s_tool("helm"));
        command.args(["lint", "--strict", "--namespace", NAMESPACE]).arg(&chart);
        for file in *files {
            command.arg("--values").arg(chart.join(file));
        }
        let output = run(&mut command).unwrap_or_else(|e| panic!("{case}: {e:#}"));
        assert!(output.contains("0 chart(s) failed"), "{case}: {output}");
    }
}

#[test]
fn every_rendered_object_is_a_valid_kubernetes_object() {
    let crds = reco_crds();
    for (case, files) in VALUES_CASES {
        let objects = render(files);
        let mut kinds = BTreeSet::new();
        for object in &objects {
            kinds.insert(kind(object).to_owned());
            if check_builtin(object).unwrap_or_else(|e| panic!("{case}: {e:#}")) {
                continue;
            }
            match object["apiVersion"].as_str().unwrap() {
                "reco.seed.dev/v1alpha1" => {
                    let problems = validate_custom_resource(&crds, object, None);
                    assert!(problems.is_empty(), "{case}: {}: {problems:#?}", describe(object));
                }
                // No offline schema: checked by the monitoring tests below.
                "monitoring.coreos.com/v1" => {}
                other => panic!("{case}: {}: unexpected apiVersion {other}", describe(object)),
            }
        }
        for required in ["CustomResourceDefinition", "ServiceAccount", "Deployment", "Service"] {
            assert!(kinds.contains(required), "{case}: no {required} rendered (got {kinds:?})");
        }
    }
}

/// Kinds the chart renders only when their values turn them on.
const OPTIONAL_KINDS: [&str; 7] = [
    "ServiceMonitor",
    "PodMonitor",
    "PrometheusRule",
    "NetworkPolicy",
    "ConfigMap",
    "RecommenderPipeline",
    "PodDisruptionBudget",
];

#[test]
fn full_values_render_every_optional_object() {
    let objects = render(&["ci/full-values.yaml"]);
    let kinds: BTreeSet<&str> = objects.iter().map(kind).collect();
    for optional in OPTIONAL_KINDS {
        assert!(kinds.contains(optional), "full values render no {optional}");
    }
    let minimal = render(&["ci/minimal-values.yaml"]);
    let kinds: BTreeSet<&str> = minimal.iter().map(kind).collect();
    for absent in OPTIONAL_KINDS {
        assert!(!kinds.contains(absent), "minimal values render a {absent}");
    }
}

/// Cluster-wide: one ClusterRole. Namespaced: a Role in each watched
/// namespace and nothing cluster-wide. Either way the union of grants is the
/// fixture (less leases without leader election), and every binding names
/// the Deployment's ServiceAccount.
#[test]
fn rbac_grants_exactly_the_calls_the_operator_makes() {
    let all = operator_grants();
    let leases = ("coordination.k8s.io".to_owned(), "leases".to_owned());
    let cases: &[(&str, &[&str], &[&str], bool)] = &[
        // (case, values files, watched namespaces, leader election)
        ("default", &[], &[], true),
        ("minimal", &["ci/minimal-values.yaml"], &[], false),
        ("full", &["ci/full-values.yaml"], &["reco-system", "recs-prod", "recs-staging"], true),
    ];
    for (case, files, watched, leader_election) in cases {
        let objects = render(files);
        let service_account = deployment(&objects)["spec"]["template"]["spec"]["serviceAccountName"].clone();
        let mut workload_expected = all.clone();
        workload_expected.remove(&leases);

        let cluster_roles: Vec<&Value> = objects_of_kind(&objects, "ClusterRole").collect();
        let roles: Vec<&Value> = objects_of_kind(&objects, "Role").collect();
        let mut union = Grants::new();
        if watched.is_empty() {
            assert_eq!(cluster_roles.len(), 1, "{case}: one ClusterRole when watching all namespaces");
            let mut grants = Grants::new();
            add_rules(&mut grants, cluster_roles[0]).unwrap();
            assert_eq!(grants, workload_expected, "{case}: ClusterRole");
            union.extend(grants);
        } else {
            assert!(cluster_roles.is_empty(), "{case}: no ClusterRole when watchNamespaces is set");
            assert!(objects_of_kind(&objects, "ClusterRoleBinding").next().is_none(), "{case}: no ClusterRoleBinding");
            for namespace in *watched {
                let role = roles
                    .iter()
                    .find(|r| r["metadata"]["namespace"] == *namespace && r["metadata"]["name"] == "reco")
                    .unwrap_or_else(|| panic!("{case}: no Role in watched namespace {namespace}"));
                let mut grants = Grants::new();
                add_rules(&mut grants, role).unwrap();
                assert_eq!(grants, workload_expected, "{case}: Role in {namespace}");
                union.extend(grants);
            }
        }
        for role in &roles {
            let mut grants = Grants::new();
            add_rules(&mut grants, role).unwrap();
            if grants.contains_key(&leases) {
                assert_eq!(role["metadata"]["namespace"], NAMESPACE, "{case}: leases only in the release namespace");
                assert_eq!(grants.len(), 1, "{case}: the leader-election Role grants leases only");
                union.extend(grants);
            }
        }
        let mut expected = all.clone();
        if !leader_election {
            expected.remove(&leases);
        }
        assert_eq!(union, expected, "{case}: everything granted");

        for binding in objects.iter().filter(|o| kind(o).ends_with("RoleBinding")) {
            let subjects = binding["subjects"].as_array().unwrap();
            assert_eq!(subjects.len(), 1, "{case}: {}", describe(binding));
            assert_eq!(subjects[0]["kind"], "ServiceAccount");
            assert_eq!(subjects[0]["name"], service_account, "{case}: {} binds another account", describe(binding));
            assert_eq!(subjects[0]["namespace"], NAMESPACE);
            let role_kind = binding["roleRef"]["kind"].as_str().unwrap();
            let role_name = &binding["roleRef"]["name"];
            let bound = objects.iter().any(|o| {
                kind(o) == role_kind
                    && &o["metadata"]["name"] == role_name
                    && o["metadata"]["namespace"] == binding["metadata"]["namespace"]
            });
            assert!(bound, "{case}: {} refers to a missing {role_kind} {role_name}", describe(binding));
        }
    }
}

#[test]
fn every_container_is_restricted_limited_probed_and_pinned() {
    for (case, files) in VALUES_CASES {
        for workload in render(files).iter().filter(|o| o["spec"]["template"]["spec"].is_object()) {
            check_workload(workload).unwrap_or_else(|e| panic!("{case}: {e:#}"));
        }
    }
}

#[test]
fn operator_deployment_runs_as_documented() {
    let objects = render(&[]);
    let deployment = deployment(&objects);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(deployment["spec"]["replicas"], 2, "two replicas by default");
    assert_eq!(pod["containers"][0]["image"], "ghcr.io/reco-seed/reco-operator:0.1.0");
    let env = env(deployment);
    assert_eq!(env["RECO_LEADER_ELECTION"], "true");
    assert_eq!(env["RECO_LEASE_NAME"], "reco-operator");
    assert_eq!(env["RECO_WATCH_NAMESPACES"], "", "empty: all namespaces");
    assert_eq!(env["RECO_METRICS_ADDR"], "0.0.0.0:8080");
    assert_eq!(env["RECO_LOG_FORMAT"], "json");
    assert_eq!(env["RECO_SERVICES_IMAGE"], "ghcr.io/reco-seed/reco:0.1.0", "the services matching the chart");
    assert_eq!(env["POD_NAME"], json!({"fieldRef": {"fieldPath": "metadata.name"}}));
    assert_eq!(env["POD_NAMESPACE"], json!({"fieldRef": {"fieldPath": "metadata.namespace"}}));

    let container = &pod["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"], json!({"path": "/healthz", "port": "http-metrics"}));
    assert_eq!(container["readinessProbe"]["httpGet"], json!({"path": "/readyz", "port": "http-metrics"}));
    assert_eq!(container["ports"][0], json!({"name": "http-metrics", "containerPort": 8080, "protocol": "TCP"}));
    assert_eq!(container["volumeMounts"], json!([{"name": "tmp", "mountPath": "/tmp"}]), "a writable /tmp only");

    let selector = &deployment["spec"]["selector"]["matchLabels"];
    let anti_affinity =
        &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"];
    assert_eq!(anti_affinity["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(
        &anti_affinity["labelSelector"]["matchLabels"], selector,
        "anti-affinity spreads the operator's own pods"
    );
    let pdb = objects_of_kind(&objects, "PodDisruptionBudget").next().expect("a PDB by default");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], selector);
    let service = objects_of_kind(&objects, "Service").next().unwrap();
    assert_eq!(&service["spec"]["selector"], selector);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http-metrics");

    let full = render(&["ci/full-values.yaml"]);
    let deployment = self::deployment(&full);
    let env = self::env(deployment);
    assert_eq!(env["RECO_WATCH_NAMESPACES"], "reco-system,recs-prod,recs-staging");
    assert_eq!(env["RECO_LOG_FORMAT"], "text");
    assert_eq!(
        env["RECO_SERVICES_IMAGE"],
        "mirror.example/reco/reco:0.1.0@sha256:1111111111111111111111111111111111111111111111111111111111111111"
    );
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/reco-seed/reco-operator:0.1.0@sha256:0000000000000000000000000000000000000000000000000000000000000000"
    );
    let hard = &deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
    assert_eq!(hard[0]["topologyKey"], "kubernetes.io/hostname", "podAntiAffinity: hard");

    let minimal = render(&["ci/minimal-values.yaml"]);
    assert_eq!(self::env(self::deployment(&minimal))["RECO_LEADER_ELECTION"], "false");
}

/// Wrong values fail `helm template` (as they fail `helm install`) with a
/// message naming the value.
#[test]
fn wrong_values_fail_with_a_message_naming_the_value() {
    let cases: &[(&[&str], &str)] = &[
        (&["replicaCount=two"], "/replicaCount"),
        (&["replicaCount=0"], "/replicaCount"),
        (&["image.tag=latest"], "/image/tag"),
        (&["image.digest=sha256:abc"], "/image/digest"),
        (&["servicesImage.tag=latest"], "/servicesImage/tag"),
        (&["servicesImage.repository="], "/servicesImage/repository"),
        (&["logFormat=yaml"], "/logFormat"),
        (&["podAntiAffinity=always"], "/podAntiAffinity"),
        (&["watchNamespaces[0]=Not_A_Namespace"], "/watchNamespaces/0"),
        (&["metrics.port=80"], "/metrics/port"),
        (&["resources.limits=null"], "/resources"),
        (&["resources.limits.memory=lots"], "/resources/limits/memory"),
        (&["serviceMonitor.interval=often"], "/serviceMonitor/interval"),
        (&["prometheusRule.inconclusiveFor=1 hour"], "/prometheusRule/inconclusiveFor"),
        (&["replicas=2"], "'replicas'"),
        (&["networkPolicy.enable=true"], "'enable'"),
        (&["leaderElection.enabled=false"], "replicaCount: 2 replicas need leaderElection.enabled=true"),
        (
            &["samplePipeline.enabled=true", "watchNamespaces[0]=elsewhere"],
            "samplePipeline.enabled: the release namespace \"reco-system\"",
        ),
    ];
    for (sets, named) in cases {
        let error = match helm_template(&[], sets) {
            Ok(_) => panic!("--set {sets:?} was accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(error.contains(named), "--set {sets:?}: the error does not name {named}:\n{error}");
    }
}

#[test]
fn service_monitor_scrapes_the_metrics_service() {
    let objects = render(&["ci/full-values.yaml"]);
    let monitor = objects_of_kind(&objects, "ServiceMonitor").next().unwrap();
    let service = objects_of_kind(&objects, "Service").next().unwrap();
    let service_labels = service["metadata"]["labels"].as_object().unwrap();
    for (key, value) in monitor["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            service_labels.get(key),
            Some(value),
            "the ServiceMonitor selects label {key}={value} the Service lacks"
        );
    }
    assert_eq!(monitor["spec"]["namespaceSelector"]["matchNames"], json!([NAMESPACE]));
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], service["spec"]["ports"][0]["name"]);
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["honorLabels"], true, "keeps the pipelines' own namespace label");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus", "serviceMonitor.labels reach the object");
}

/// The PodMonitor scrapes every pod the operator renders, on its HTTP port, in
/// the watched namespaces, and relabels `job` to the pod's controller (for
/// gateways the gateway Service's name; the operator's tests check its
/// selector and rules against the pods it renders, on the kustomize
/// component, which the kustomize tests compare with this one).
#[test]
fn pod_monitor_scrapes_gateway_pods_under_the_gateway_service_job() {
    let objects = render(&["ci/full-values.yaml"]);
    let monitor = objects_of_kind(&objects, "PodMonitor").next().expect("a PodMonitor");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus", "podMonitor.labels reach the object");
    assert_eq!(
        monitor["spec"]["namespaceSelector"],
        json!({"matchNames": ["reco-system", "recs-prod", "recs-staging"]})
    );
    let all_namespaces = helm_template(&[], &["podMonitor.enabled=true"]).unwrap_or_else(|e| panic!("{e:#}"));
    let all_namespaces = parse_documents(&all_namespaces).unwrap();
    let all_namespaces = objects_of_kind(&all_namespaces, "PodMonitor").next().unwrap();
    assert_eq!(all_namespaces["spec"]["namespaceSelector"], json!({"any": true}), "watchNamespaces empty: all");

    let selector = &monitor["spec"]["selector"]["matchLabels"];
    assert_eq!(selector["app.kubernetes.io/managed-by"], "reco-operator");
    assert!(selector.get("app.kubernetes.io/component").is_none(), "every component's pods: {selector}");
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!((&endpoint["port"], &endpoint["path"]), (&json!("http"), &json!("/metrics")));
    assert_eq!(endpoint["honorLabels"], true, "the services' own labels win");
    let relabel = &endpoint["relabelings"][0];
    assert_eq!(relabel["sourceLabels"], json!(["__meta_kubernetes_pod_controller_name"]));
    assert_eq!(relabel["targetLabel"], "job");
}

/// The alert rules and the dashboard's queries pass `promtool check rules`
/// and use only metrics the operator exports or docs/metrics.md documents.
#[test]
fn alerts_and_dashboard_queries_are_valid_promql_on_operator_metrics() {
    let objects = render(&["ci/full-values.yaml"]);
    let rule = objects_of_kind(&objects, "PrometheusRule").next().unwrap();
    let alerts: BTreeSet<&str> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["alert"].as_str())
        .collect();
    for expected in [
        "RecoRollbackHappened",
        "RecoAnalysisInconclusiveTooLong",
        "RecoReconcileErrors",
        "RecoOperatorDown",
        "RecoVersionDegraded",
        "RecoVersionHideRateHigh",
        "RecoVersionDiversityDropped",
        "RecoFeatureDrift",
        "RecoFeatureOutOfRange",
    ] {
        assert!(alerts.contains(expected), "no {expected} alert in {alerts:?}");
    }

    let dashboard_map = objects_of_kind(&objects, "ConfigMap").next().unwrap();
    assert_eq!(dashboard_map["metadata"]["labels"]["grafana_dashboard"], "1", "the Grafana sidecar imports it");
    let dashboard: Value = serde_json::from_str(dashboard_map["data"]["reco-operator.json"].as_str().unwrap())
        .expect("the dashboard is JSON");
    let mut recording = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            // Grafana's variables, replaced by what they expand to.
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "5m")
                .replace("$namespace", ".*")
                .replace("$pipeline", ".*");
            recording.push(json!({"record": format!("dashboard:panel_{}:{}", panel["id"], target["refId"].as_str().unwrap()), "expr": expr}));
        }
    }
    let mut groups = rule["spec"]["groups"].as_array().unwrap().clone();
    groups.push(json!({"name": "dashboard", "rules": recording}));

    let (operator, documented) = (operator_metric_series(), documented_metric_series());
    for group in &groups {
        for entry in group["rules"].as_array().unwrap() {
            let expr = entry["expr"].as_str().unwrap();
            for name in metric_names_in(expr) {
                if name.starts_with("reco_operator_") {
                    assert!(operator.contains(&name), "{name} in {expr:?} is not a metric the operator exports");
                } else {
                    assert!(documented.contains(&name), "{name} in {expr:?} is not in docs/metrics.md");
                }
            }
        }
    }
    let file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    std::fs::write(file.path(), serde_json::to_string(&json!({"groups": groups})).unwrap()).unwrap();
    let output =
        run(Command::new(promtool()).args(["check", "rules"]).arg(file.path())).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(output.contains("SUCCESS"), "{output}");
}

/// NOTES.txt, which `helm template` skips, renders and says what was installed.
#[test]
fn install_notes_say_what_the_operator_manages() {
    let cases: &[(&[&str], &[&str])] = &[
        (&[], &["in every namespace", "leader election on Lease reco-operator", "serviceMonitor.enabled=true"]),
        (&["ci/full-values.yaml"], &["in: reco-system, recs-prod, recs-staging", "get recommenderpipeline explore"]),
        (&["ci/minimal-values.yaml"], &["(1 replica(s))"]),
    ];
    let chart = repo_path("charts/reco");
    for (files, expected) in cases {
        let mut command = Command::new(k8s_tool("helm"));
        command.args(["install", RELEASE]).arg(&chart).args(["--namespace", NAMESPACE, "--dry-run=client"]);
        for file in *files {
            command.arg("--values").arg(chart.join(file));
        }
        let output = run(&mut command).unwrap_or_else(|e| panic!("{files:?}: {e:#}"));
        let notes =
            output.split_once("NOTES:").map(|(_, n)| n).unwrap_or_else(|| panic!("{files:?}: no NOTES in {output}"));
        for text in *expected {
            assert!(notes.contains(text), "{files:?}: NOTES lack {text:?}:\n{notes}");
        }
        assert!(notes.contains("Deleting the CRDs deletes all of them"), "NOTES warn about deleting the CRDs");
    }
}
