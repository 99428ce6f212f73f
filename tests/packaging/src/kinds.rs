//! Kubernetes objects checked against the k8s-openapi types, and the rules
//! every reco pod must follow.

use anyhow::{Result, bail, ensure};
use k8s_openapi::api::{apps, core, networking, policy, rbac};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

use crate::{describe, round_trip};

/// Checks a built-in object against its API type, unknown fields rejected.
/// Returns false for kinds that are not built in (custom resources), which
/// the callers check against their own schemas.
pub fn check_builtin(object: &Value) -> Result<bool> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    match (api_version, kind) {
        ("v1", "Namespace") => round_trip::<core::v1::Namespace>(object)?,
        ("v1", "ServiceAccount") => round_trip::<core::v1::ServiceAccount>(object)?,
        ("v1", "Service") => round_trip::<core::v1::Service>(object)?,
        ("v1", "ConfigMap") => round_trip::<core::v1::ConfigMap>(object)?,
        ("apps/v1", "Deployment") => round_trip::<apps::v1::Deployment>(object)?,
        ("policy/v1", "PodDisruptionBudget") => round_trip::<policy::v1::PodDisruptionBudget>(object)?,
        ("networking.k8s.io/v1", "NetworkPolicy") => round_trip::<networking::v1::NetworkPolicy>(object)?,
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => round_trip::<rbac::v1::ClusterRole>(object)?,
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => round_trip::<rbac::v1::ClusterRoleBinding>(object)?,
        ("rbac.authorization.k8s.io/v1", "Role") => round_trip::<rbac::v1::Role>(object)?,
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => round_trip::<rbac::v1::RoleBinding>(object)?,
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => round_trip::<CustomResourceDefinition>(object)?,
        (v, k) if v.contains(".k8s.io/") || !v.contains('.') => {
            bail!("{}: {k} ({v}) is not a kind these tests know", describe(object))
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Every container of a workload's pod template: Pod Security "restricted",
/// cpu and memory limits, liveness and readiness probes, and an image pinned
/// to a version.
pub fn check_workload(workload: &Value) -> Result<()> {
    let who = describe(workload);
    let pod = &workload["spec"]["template"]["spec"];
    let pod_security = &pod["securityContext"];
    ensure!(pod_security["runAsNonRoot"] == true, "{who}: pod securityContext.runAsNonRoot must be true");
    ensure!(
        pod_security["seccompProfile"]["type"] == "RuntimeDefault",
        "{who}: pod seccompProfile must be RuntimeDefault"
    );
    ensure!(
        pod["hostNetwork"] != true && pod["hostPID"] != true && pod["hostIPC"] != true,
        "{who}: no host namespaces"
    );
    for volume in pod["volumes"].as_array().into_iter().flatten() {
        ensure!(volume.get("hostPath").is_none(), "{who}: hostPath volumes are not allowed under restricted");
    }
    let containers: Vec<&Value> =
        ["initContainers", "containers"].iter().flat_map(|f| pod[*f].as_array().into_iter().flatten()).collect();
    ensure!(!containers.is_empty(), "{who}: no containers");
    for container in containers {
        let name = format!("{who} container {}", container["name"]);
        let security = &container["securityContext"];
        ensure!(security["allowPrivilegeEscalation"] == false, "{name}: allowPrivilegeEscalation must be false");
        ensure!(security["readOnlyRootFilesystem"] == true, "{name}: readOnlyRootFilesystem must be true");
        ensure!(security["runAsNonRoot"] == true, "{name}: runAsNonRoot must be true");
        ensure!(security["privileged"] != true, "{name}: must not be privileged");
        ensure!(
            security["capabilities"]["drop"] == serde_json::json!(["ALL"]),
            "{name}: capabilities.drop must be [ALL]"
        );
        ensure!(security["capabilities"].get("add").is_none(), "{name}: no capabilities may be added");
        ensure!(
            security["seccompProfile"]["type"] == "RuntimeDefault",
            "{name}: seccompProfile must be RuntimeDefault"
        );
        for resource in ["cpu", "memory"] {
            ensure!(container["resources"]["limits"].get(resource).is_some(), "{name}: no {resource} limit");
            ensure!(container["resources"]["requests"].get(resource).is_some(), "{name}: no {resource} request");
        }
        for probe in ["livenessProbe", "readinessProbe"] {
            ensure!(container.get(probe).is_some(), "{name}: no {probe}");
        }
        check_image(&name, container["image"].as_str().unwrap_or_default())?;
    }
    Ok(())
}

/// An image reference must name a version: a tag other than `latest`, or a digest.
pub fn check_image(who: &str, image: &str) -> Result<()> {
    let (name, digest) = image.split_once('@').map_or((image, None), |(n, d)| (n, Some(d)));
    let last = name.rsplit('/').next().unwrap_or(name);
    let tag = last.split_once(':').map(|(_, t)| t);
    ensure!(tag != Some("latest"), "{who}: image {image:?} uses latest");
    ensure!(tag.is_some() || digest.is_some(), "{who}: image {image:?} names no tag or digest (that is latest)");
    if let Some(digest) = digest {
        ensure!(
            digest.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())),
            "{who}: image {image:?} has a malformed digest"
        );
    }
    Ok(())
}
