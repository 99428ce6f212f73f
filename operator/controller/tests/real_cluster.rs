//! The operator scenarios against genuine Kubernetes API servers, ignored
//! unless asked for. `make test` runs them on the servers it builds from
//! Debian sources (scripts/ensure-kube-apiserver.sh, scripts/kube-up.sh);
//! any cluster works (kind, k3d):
//!
//! ```text
//! eval "$(scripts/ensure-kube-apiserver.sh)" && eval "$(scripts/kube-up.sh)"
//! RECO_REAL_CLUSTER=1 cargo test -p reco-operator --test real_cluster -- --ignored --test-threads=1
//! ```
//!
//! Each test runs the controller in-process against the cluster of the
//! current kubeconfig, in a namespace of its own that it deletes at the end
//! (a failed test leaves it for inspection). Metrics are scripted as in the
//! test-double runs: the serving images need not run for the rollout logic
//! to be exercised. Injected API errors need the test double, so
//! `api_errors_and_conflicts_converge` has no twin here;
//! `a_restart_waits_for_every_cache` denies the ModelVersions through RBAC.

mod common;

use common::{Scenario, scenarios};

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: RECO_REAL_CLUSTER=1 and KUBECONFIG"]
async fn a_pipeline_creates_its_objects_and_status() {
    let s = Scenario::real_cluster().await;
    scenarios::a_pipeline_creates_its_objects_and_status(&s).await;
    s.cleanup().await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: RECO_REAL_CLUSTER=1 and KUBECONFIG"]
async fn an_upgrade_replaces_the_features_deployment() {
    let s = Scenario::real_cluster().await;
    scenarios::an_upgrade_replaces_the_features_deployment(&s).await;
    s.cleanup().await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: RECO_REAL_CLUSTER=1 and KUBECONFIG"]
async fn a_better_version_is_promoted_through_every_step() {
    let s = Scenario::real_cluster().await;
    scenarios::a_better_version_is_promoted_through_every_step(&s).await;
    s.cleanup().await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: RECO_REAL_CLUSTER=1 and KUBECONFIG"]
async fn a_worse_version_is_rolled_back_and_stable_keeps_serving() {
    let s = Scenario::real_cluster().await;
    scenarios::a_worse_version_is_rolled_back_and_stable_keeps_serving(&s).await;
    s.cleanup().await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: RECO_REAL_CLUSTER=1 and KUBECONFIG"]
async fn an_operator_restart_mid_canary_resumes_where_it_was() {
    let s = Scenario::real_cluster().await;
    scenarios::an_operator_restart_mid_canary_resumes_where_it_was(&s).await;
    s.cleanup().await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: RECO_REAL_CLUSTER=1 and KUBECONFIG"]
async fn a_restart_waits_for_every_cache() {
    let s = Scenario::real_cluster().await;
    scenarios::a_restart_waits_for_every_cache(&s).await;
    s.cleanup().await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: RECO_REAL_CLUSTER=1 and KUBECONFIG"]
async fn an_invalid_spec_is_reported_and_changes_nothing() {
    let s = Scenario::real_cluster().await;
    scenarios::an_invalid_spec_is_reported_and_changes_nothing(&s).await;
    s.cleanup().await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: RECO_REAL_CLUSTER=1 and KUBECONFIG"]
async fn invalid_names_are_refused_before_anything_is_written() {
    let s = Scenario::real_cluster().await;
    scenarios::invalid_names_are_refused_before_anything_is_written(&s).await;
    s.cleanup().await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: RECO_REAL_CLUSTER=1 and KUBECONFIG"]
async fn a_version_that_leaves_the_pipeline_loses_its_objects() {
    let s = Scenario::real_cluster().await;
    scenarios::a_version_that_leaves_the_pipeline_loses_its_objects(&s).await;
    s.cleanup().await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: RECO_REAL_CLUSTER=1 and KUBECONFIG"]
async fn a_version_that_left_the_routing_drains_before_its_objects_go() {
    let s = Scenario::real_cluster().await;
    scenarios::a_version_that_left_the_routing_drains_before_its_objects_go(&s).await;
    s.cleanup().await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: RECO_REAL_CLUSTER=1 and KUBECONFIG"]
async fn the_abort_annotation_rolls_back_at_once() {
    let s = Scenario::real_cluster().await;
    scenarios::the_abort_annotation_rolls_back_at_once(&s).await;
    s.cleanup().await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: RECO_REAL_CLUSTER=1 and KUBECONFIG"]
async fn a_paused_pipeline_does_not_advance() {
    let s = Scenario::real_cluster().await;
    scenarios::a_paused_pipeline_does_not_advance(&s).await;
    s.cleanup().await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: RECO_REAL_CLUSTER=1 and KUBECONFIG"]
async fn routing_configmap_is_what_gateways_parse() {
    let s = Scenario::real_cluster().await;
    scenarios::routing_configmap_is_what_gateways_parse(&s).await;
    s.cleanup().await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: RECO_REAL_CLUSTER=1 and KUBECONFIG"]
async fn missing_metrics_hold_the_weight_and_never_promote() {
    let s = Scenario::real_cluster().await;
    scenarios::missing_metrics_hold_the_weight_and_never_promote(&s).await;
    s.cleanup().await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: RECO_REAL_CLUSTER=1 and KUBECONFIG"]
async fn drift_on_owned_objects_is_corrected() {
    let s = Scenario::real_cluster().await;
    scenarios::drift_on_owned_objects_is_corrected(&s).await;
    s.cleanup().await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: RECO_REAL_CLUSTER=1 and KUBECONFIG"]
async fn a_lost_pipeline_status_is_rebuilt_from_the_versions() {
    let s = Scenario::real_cluster().await;
    scenarios::a_lost_pipeline_status_is_rebuilt_from_the_versions(&s).await;
    s.cleanup().await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: RECO_REAL_CLUSTER=1 and KUBECONFIG"]
async fn a_version_takes_traffic_only_once_its_pods_are_ready() {
    let s = Scenario::real_cluster().await;
    scenarios::a_version_takes_traffic_only_once_its_pods_are_ready(&s).await;
    s.cleanup().await;
}
