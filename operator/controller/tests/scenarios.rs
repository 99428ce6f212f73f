//! The operator's controller, run for real (kube-runtime, server-side apply,
//! status writes, Events) against the in-process Kubernetes API test double
//! of `reco-kube-testserver`, because no control plane can be installed on
//! the build machines. Live metrics come from a scripted source whose CTR per
//! version the test sets; the real Prometheus and scrape sources are tested
//! in `reco-metric-source`. The same scenarios run against a real cluster in
//! `real_cluster.rs`.

mod common;

use common::{Scenario, scenarios};

#[tokio::test]
async fn a_pipeline_creates_its_objects_and_status() {
    scenarios::a_pipeline_creates_its_objects_and_status(&Scenario::start().await).await;
}

#[tokio::test]
async fn an_upgrade_replaces_the_features_deployment() {
    scenarios::an_upgrade_replaces_the_features_deployment(&Scenario::start().await).await;
}

#[tokio::test]
async fn a_better_version_is_promoted_through_every_step() {
    scenarios::a_better_version_is_promoted_through_every_step(&Scenario::start().await).await;
}

#[tokio::test]
async fn a_worse_version_is_rolled_back_and_stable_keeps_serving() {
    scenarios::a_worse_version_is_rolled_back_and_stable_keeps_serving(&Scenario::start().await).await;
}

#[tokio::test]
async fn an_operator_restart_mid_canary_resumes_where_it_was() {
    scenarios::an_operator_restart_mid_canary_resumes_where_it_was(&Scenario::start().await).await;
}

#[tokio::test]
async fn api_errors_and_conflicts_converge() {
    scenarios::api_errors_and_conflicts_converge(&Scenario::start().await).await;
}

#[tokio::test]
async fn an_invalid_spec_is_reported_and_changes_nothing() {
    scenarios::an_invalid_spec_is_reported_and_changes_nothing(&Scenario::start().await).await;
}

#[tokio::test]
async fn invalid_names_are_refused_before_anything_is_written() {
    scenarios::invalid_names_are_refused_before_anything_is_written(&Scenario::start().await).await;
}

#[tokio::test]
async fn a_version_that_leaves_the_pipeline_loses_its_objects() {
    scenarios::a_version_that_leaves_the_pipeline_loses_its_objects(&Scenario::start().await).await;
}

#[tokio::test]
async fn a_version_that_left_the_routing_drains_before_its_objects_go() {
    scenarios::a_version_that_left_the_routing_drains_before_its_objects_go(&Scenario::start().await).await;
}

#[tokio::test]
async fn the_abort_annotation_rolls_back_at_once() {
    scenarios::the_abort_annotation_rolls_back_at_once(&Scenario::start().await).await;
}

#[tokio::test]
async fn a_lost_pipeline_status_is_rebuilt_from_the_versions() {
    scenarios::a_lost_pipeline_status_is_rebuilt_from_the_versions(&Scenario::start().await).await;
}

#[tokio::test]
async fn a_restart_waits_for_every_cache() {
    scenarios::a_restart_waits_for_every_cache(&Scenario::start().await).await;
}

#[tokio::test]
async fn a_paused_pipeline_does_not_advance() {
    scenarios::a_paused_pipeline_does_not_advance(&Scenario::start().await).await;
}

#[tokio::test]
async fn routing_configmap_is_what_gateways_parse() {
    scenarios::routing_configmap_is_what_gateways_parse(&Scenario::start().await).await;
}

#[tokio::test]
async fn missing_metrics_hold_the_weight_and_never_promote() {
    scenarios::missing_metrics_hold_the_weight_and_never_promote(&Scenario::start().await).await;
}

#[tokio::test]
async fn drift_on_owned_objects_is_corrected() {
    scenarios::drift_on_owned_objects_is_corrected(&Scenario::start().await).await;
}

#[tokio::test]
async fn a_reconcile_that_changes_nothing_applies_nothing() {
    scenarios::a_reconcile_that_changes_nothing_applies_nothing(&Scenario::start().await).await;
}

#[tokio::test]
async fn a_version_whose_pods_cannot_start_fails_and_stable_serves_on() {
    scenarios::a_version_whose_pods_cannot_start_fails_and_stable_serves_on(&Scenario::start().await).await;
}

#[tokio::test]
async fn a_version_takes_traffic_only_once_its_pods_are_ready() {
    scenarios::a_version_takes_traffic_only_once_its_pods_are_ready(&Scenario::start().await).await;
}
