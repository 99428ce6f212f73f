//! manifests/: the kustomize base and overlays, rendered with `kubectl kustomize`.

use std::collections::BTreeSet;

use reco_packaging_tests::kinds::{check_builtin, check_workload};
use reco_packaging_tests::*;
use serde_json::Value;

struct Overlay {
    dir: &'static str,
    replicas: i64,
    leader_election: &'static str,
    kinds: &'static [&'static str],
}

const COMMON: &[&str] = &[
    "Namespace",
    "CustomResourceDefinition",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Deployment",
    "Service",
];

const OVERLAYS: &[Overlay] = &[
    Overlay {
        dir: "manifests/base",
        replicas: 2,
        leader_election: "true",
        kinds: &["Role", "RoleBinding", "PodDisruptionBudget"],
    },
    Overlay { dir: "manifests/overlays/dev", replicas: 1, leader_election: "false", kinds: &[] },
    Overlay {
        dir: "manifests/overlays/prod",
        replicas: 2,
        leader_election: "true",
        kinds: &["Role", "RoleBinding", "PodDisruptionBudget", "NetworkPolicy"],
    },
];

fn render(dir: &str) -> Vec<Value> {
    parse_documents(&kustomize(dir).unwrap_or_else(|e| panic!("{e:#}"))).unwrap()
}

#[test]
fn every_overlay_renders_valid_objects_of_the_expected_kinds() {
    for overlay in OVERLAYS {
        let objects = render(overlay.dir);
        let kinds: BTreeSet<&str> = objects.iter().map(kind).collect();
        let expected: BTreeSet<&str> = COMMON.iter().chain(overlay.kinds).copied().collect();
        assert_eq!(kinds, expected, "{}", overlay.dir);
        for object in &objects {
            assert!(
                check_builtin(object).unwrap_or_else(|e| panic!("{}: {e:#}", overlay.dir)),
                "{}: {}",
                overlay.dir,
                describe(object)
            );
            let cluster_scoped =
                ["Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"].contains(&kind(object));
            if !cluster_scoped {
                assert_eq!(object["metadata"]["namespace"], "reco-system", "{}: {}", overlay.dir, describe(object));
            }
        }
        let deployment = objects_of_kind(&objects, "Deployment").next().unwrap();
        assert_eq!(deployment["spec"]["replicas"], overlay.replicas, "{}", overlay.dir);
        let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
        let leader_election = env.iter().find(|e| e["name"] == "RECO_LEADER_ELECTION").unwrap();
        assert_eq!(leader_election["value"], overlay.leader_election, "{}", overlay.dir);
        let services_image = env.iter().find(|e| e["name"] == "RECO_SERVICES_IMAGE").unwrap();
        assert_eq!(services_image["value"], "ghcr.io/reco-seed/reco:0.1.0", "{}: the chart's default", overlay.dir);
    }
}

#[test]
fn every_overlay_grants_exactly_the_calls_the_operator_makes() {
    let leases = ("coordination.k8s.io".to_owned(), "leases".to_owned());
    for overlay in OVERLAYS {
        let objects = render(overlay.dir);
        let mut granted = Grants::new();
        for role in objects.iter().filter(|o| kind(o) == "Role" || kind(o) == "ClusterRole") {
            add_rules(&mut granted, role).unwrap_or_else(|e| panic!("{}: {e:#}", overlay.dir));
        }
        let mut expected = operator_grants();
        if overlay.leader_election == "false" {
            expected.remove(&leases);
        }
        assert_eq!(granted, expected, "{}", overlay.dir);
        let account =
            &objects_of_kind(&objects, "Deployment").next().unwrap()["spec"]["template"]["spec"]["serviceAccountName"];
        for binding in objects.iter().filter(|o| kind(o).ends_with("RoleBinding")) {
            assert_eq!(&binding["subjects"][0]["name"], account, "{}: {}", overlay.dir, describe(binding));
            assert_eq!(binding["subjects"][0]["namespace"], "reco-system", "{}: {}", overlay.dir, describe(binding));
        }
    }
}

#[test]
fn every_overlay_runs_restricted_limited_probed_and_pinned_containers() {
    for overlay in OVERLAYS {
        for workload in render(overlay.dir).iter().filter(|o| o["spec"]["template"]["spec"].is_object()) {
            check_workload(workload).unwrap_or_else(|e| panic!("{}: {e:#}", overlay.dir));
        }
    }
}

/// The CRDs are crds/ as generated, plus annotations that keep Flux and Argo
/// CD from ever pruning them (which would delete every custom resource).
#[test]
fn crds_are_the_generated_ones_and_never_pruned() {
    let generated = reco_crds();
    for overlay in OVERLAYS {
        for crd in objects_of_kind(&render(overlay.dir), "CustomResourceDefinition") {
            let kind = crd["spec"]["names"]["kind"].as_str().unwrap();
            let difference = first_difference(&crd["spec"], &generated[kind]["spec"], ".spec");
            assert_eq!(difference, None, "{}: the {kind} CRD differs from crds/ at this path", overlay.dir);
            let annotations = &crd["metadata"]["annotations"];
            assert_eq!(annotations["kustomize.toolkit.fluxcd.io/prune"], "disabled", "{}: {kind}", overlay.dir);
            assert_eq!(annotations["argocd.argoproj.io/sync-options"], "Prune=false", "{}: {kind}", overlay.dir);
        }
    }
}

#[test]
fn prod_spreads_replicas_and_admits_only_the_metrics_port() {
    let objects = render("manifests/overlays/prod");
    let pod = &objects_of_kind(&objects, "Deployment").next().unwrap()["spec"]["template"]["spec"];
    let hard = &pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(hard["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(pod["topologySpreadConstraints"][0]["topologyKey"], "topology.kubernetes.io/zone");
    let policy = objects_of_kind(&objects, "NetworkPolicy").next().unwrap();
    assert_eq!(policy["spec"]["ingress"][0]["ports"][0]["port"], "http-metrics");
    assert_eq!(policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"], "operator");
    let namespace = objects_of_kind(&objects, "Namespace").next().unwrap();
    assert_eq!(namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted");
}

/// The optional PodMonitor component, added to the base, renders the chart's
/// PodMonitor (default values) in the operator's namespace.
#[test]
fn the_pod_monitor_component_is_the_charts_pod_monitor() {
    let overlay = tempfile::tempdir().unwrap();
    // kustomize refuses absolute paths: climb from the overlay to the root.
    let depth = overlay.path().canonicalize().unwrap().components().count() - 1;
    let up = "../".repeat(depth);
    let from_root = |relative: &str| format!("{up}{}", repo_path(relative).canonicalize().unwrap().display());
    let kustomization = format!(
        "resources:\n  - {}\ncomponents:\n  - {}\n",
        from_root("manifests/base"),
        from_root("manifests/components/podmonitor")
    );
    std::fs::write(overlay.path().join("kustomization.yaml"), kustomization).unwrap();
    let output = run(std::process::Command::new(k8s_tool("kubectl")).arg("kustomize").arg(overlay.path()))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let objects = parse_documents(&output).unwrap();
    let monitor = objects_of_kind(&objects, "PodMonitor").next().expect("a PodMonitor");
    assert_eq!(monitor["metadata"]["namespace"], "reco-system");
    let chart = helm_template(&[], &["podMonitor.enabled=true"]).unwrap_or_else(|e| panic!("{e:#}"));
    let chart = parse_documents(&chart).unwrap();
    let expected = objects_of_kind(&chart, "PodMonitor").next().unwrap();
    assert_eq!(first_difference(&monitor["spec"], &expected["spec"], ".spec"), None);
}
