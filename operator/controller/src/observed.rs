//! The engine's view of the cluster, derived from the watch caches: each
//! ModelVersion as the engine sees it (broken when its pods cannot start,
//! commanded through annotations), and which versions need pods after a
//! decision. Pure: the controller passes what its caches hold.

use std::collections::BTreeSet;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use reco_api::{ABORT_ANNOTATION, ModelVersion, PROMOTE_ANNOTATION};
use reco_rollout::{Command, Decision, VersionInfo};

use crate::validation;

/// The engine's view of a ModelVersion: broken when its name cannot name its
/// objects or its pods cannot start (the engine never starts a broken
/// version), commanded through the promote/abort annotations.
pub fn version_info(v: &ModelVersion, deployments: &[Arc<Deployment>]) -> VersionInfo {
    let annotations = v.annotations();
    let command = if annotations.get(ABORT_ANNOTATION).is_some_and(|a| a == "true") {
        Some(Command::Abort)
    } else if annotations.get(PROMOTE_ANNOTATION).is_some_and(|a| a == "true") {
        Some(Command::Promote)
    } else {
        None
    };
    VersionInfo {
        name: v.name_any(),
        created: v.metadata.creation_timestamp.as_ref().map_or(Timestamp::UNIX_EPOCH, |t| t.0),
        offline_metrics: v.spec.offline_metrics.clone(),
        broken: validation::version_name_problem(&v.spec.pipeline, &v.name_any())
            .or_else(|| deployment_failure(&v.name_any(), deployments)),
        command,
    }
}

/// Why a version's pods cannot run: a Deployment that exceeded its progress
/// deadline (image that cannot be pulled, artifact that cannot be loaded).
fn deployment_failure(version: &str, deployments: &[Arc<Deployment>]) -> Option<String> {
    deployments
        .iter()
        .filter(|d| d.labels().get(reco_api::VERSION_LABEL).map(String::as_str) == Some(version))
        .find_map(|d| {
            let conditions = d.status.as_ref()?.conditions.as_ref()?;
            let stuck = conditions.iter().find(|c| {
                c.type_ == "Progressing"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            })?;
            Some(format!(
                "Deployment {} did not become available: {}",
                d.name_any(),
                stuck.message.as_deref().unwrap_or("progress deadline exceeded")
            ))
        })
}

/// Versions that need retrieval and ranking pods: those in the routing table,
/// the shadow, and the candidate (whose pods start before it gets traffic).
pub fn serving_versions(decision: &Decision) -> BTreeSet<String> {
    let mut serving: BTreeSet<String> = decision.routing.versions.iter().map(|v| v.name.clone()).collect();
    serving.extend(decision.routing.shadow.clone());
    serving.extend(decision.state.candidate.as_ref().map(|c| c.version.clone()));
    serving.extend(decision.state.stable.clone());
    serving
}
