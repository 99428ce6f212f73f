//! The node agent: a stand-in for the kubelet (and the Deployment and
//! StatefulSet controllers, which the test control plane runs without) on
//! one machine. It watches Deployments, StatefulSets, Services, Secrets and
//! ConfigMaps through the API server and, once a second:
//!
//! - runs each workload's replicas as pods with podman ([`crate::Podman`]),
//!   a StatefulSet's pod `n` with its claims `<template>-<name>-<n>` as host
//!   directories that outlive the pod; recreates them when the pod template
//!   or the Services selecting them change (no rolling update), and stops
//!   the pods of a workload that went away;
//! - publishes each Service selecting a pod as DNS aliases of the pod on the
//!   podman network (`NAME`, `NAME.NAMESPACE`, `NAME.NAMESPACE.svc`), so the
//!   operator's `http://NAME.NAMESPACE.svc:PORT` endpoints resolve;
//! - probes readiness, restarts exited containers, rewrites Secret and
//!   ConfigMap volumes when they change, and writes the workloads' status
//!   (replicas, ready, available, and `Progressing` false with
//!   `ProgressDeadlineExceeded` past the progress deadline).
//!
//! It writes no Pod objects: pods exist only as podman containers. Services
//! resolve to every pod they select, ready or not; there is no kube-proxy,
//! no ClusterIP and no scheduling (one node, no resource accounting).

use std::collections::BTreeMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PodTemplateSpec, Secret, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::{Objects, Placement, Podman, ProbeKind, RunningPod};

/// Where the agent keeps pods' files and which network it runs them on.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Pods' volumes (`pods/`) and claims (`claims/`).
    pub state_dir: PathBuf,
    pub network: String,
    /// Namespaces to run workloads of; empty means all.
    pub namespaces: Vec<String>,
    pub period: Duration,
}

/// Which workload a pod belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Owner {
    Deployment { namespace: String, name: String },
    StatefulSet { namespace: String, name: String },
}

/// A pod the workloads ask for.
#[derive(Clone, Debug)]
struct Desired {
    owner: Owner,
    generation: i64,
    template: PodTemplateSpec,
    namespace: String,
    placement: Placement,
    /// Changes when the template or the Services selecting it change.
    fingerprint: u64,
    progress_deadline: Duration,
}

struct Pod {
    running: RunningPod,
    fingerprint: u64,
    ready: bool,
    restarts: u32,
}

fn fingerprint(template: &PodTemplateSpec, aliases: &[String]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(template).unwrap_or_default().hash(&mut hasher);
    aliases.hash(&mut hasher);
    hasher.finish()
}

/// DNS names of the Services of `namespace` whose selector matches `labels`.
fn aliases(services: &[std::sync::Arc<Service>], namespace: &str, labels: &BTreeMap<String, String>) -> Vec<String> {
    let mut names = Vec::new();
    for service in services.iter().filter(|s| s.namespace().as_deref() == Some(namespace)) {
        let Some(selector) = service.spec.as_ref().and_then(|s| s.selector.as_ref()) else { continue };
        if !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            let name = service.name_any();
            names.extend([name.clone(), format!("{name}.{namespace}"), format!("{name}.{namespace}.svc")]);
        }
    }
    names.sort();
    names
}

struct Stores {
    deployments: Store<Deployment>,
    statefulsets: Store<StatefulSet>,
    services: Store<Service>,
    secrets: Store<Secret>,
    config_maps: Store<ConfigMap>,
}

fn watched<K>(client: &Client, namespaces: &[String]) -> Store<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let api: Api<K> = match namespaces {
        [one] => Api::namespaced(client.clone(), one),
        _ => Api::all(client.clone()),
    };
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default())).applied_objects();
    tokio::spawn(stream.for_each(|_| async {}));
    reader
}

impl Desired {
    fn of_workloads(stores: &Stores, config: &AgentConfig) -> BTreeMap<String, Desired> {
        let services = stores.services.state();
        let in_scope = |ns: &str| config.namespaces.is_empty() || config.namespaces.iter().any(|n| n == ns);
        let mut desired = BTreeMap::new();
        let mut add = |owner: Owner,
                       pod: String,
                       meta_generation: Option<i64>,
                       template: &PodTemplateSpec,
                       claims: BTreeMap<String, PathBuf>,
                       deadline: Duration| {
            let namespace = match &owner {
                Owner::Deployment { namespace, .. } | Owner::StatefulSet { namespace, .. } => namespace.clone(),
            };
            let labels = template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
            let aliases = aliases(&services, &namespace, &labels);
            let key = format!("{namespace}.{pod}");
            let placement = Placement {
                pod: key.clone(),
                network: config.network.clone(),
                aliases: aliases.clone(),
                pod_dir: config.state_dir.join("pods").join(&key),
                claims,
            };
            desired.insert(
                key,
                Desired {
                    owner,
                    generation: meta_generation.unwrap_or(0),
                    template: template.clone(),
                    namespace,
                    fingerprint: fingerprint(template, &aliases),
                    placement,
                    progress_deadline: deadline,
                },
            );
        };
        for d in stores.deployments.state() {
            let namespace = d.namespace().unwrap_or_default();
            let Some(spec) = d.spec.as_ref().filter(|_| in_scope(&namespace)) else { continue };
            let deadline = Duration::from_secs(spec.progress_deadline_seconds.unwrap_or(600).max(0) as u64);
            for i in 0..spec.replicas.unwrap_or(1).max(0) {
                let owner = Owner::Deployment { namespace: namespace.clone(), name: d.name_any() };
                add(
                    owner,
                    format!("{}-{i}", d.name_any()),
                    d.metadata.generation,
                    &spec.template,
                    BTreeMap::new(),
                    deadline,
                );
            }
        }
        for s in stores.statefulsets.state() {
            let namespace = s.namespace().unwrap_or_default();
            let Some(spec) = s.spec.as_ref().filter(|_| in_scope(&namespace)) else { continue };
            for i in 0..spec.replicas.unwrap_or(1).max(0) {
                let mut template = spec.template.clone();
                let mut claims = BTreeMap::new();
                for claim in spec.volume_claim_templates.iter().flatten() {
                    let volume = claim.metadata.name.clone().unwrap_or_default();
                    let claim_name = format!("{volume}-{}-{i}", s.name_any());
                    let dir = config.state_dir.join("claims").join(&namespace).join(&claim_name);
                    claims.insert(claim_name.clone(), dir);
                    template.spec.get_or_insert_default().volumes.get_or_insert_default().push(
                        k8s_openapi::api::core::v1::Volume {
                            name: volume,
                            persistent_volume_claim: Some(
                                k8s_openapi::api::core::v1::PersistentVolumeClaimVolumeSource {
                                    claim_name,
                                    ..Default::default()
                                },
                            ),
                            ..Default::default()
                        },
                    );
                }
                let owner = Owner::StatefulSet { namespace: namespace.clone(), name: s.name_any() };
                add(
                    owner,
                    format!("{}-{i}", s.name_any()),
                    s.metadata.generation,
                    &template,
                    claims,
                    Duration::from_secs(600),
                );
            }
        }
        desired
    }
}

fn objects_of(stores: &Stores, namespace: &str) -> Objects {
    let in_ns = |ns: Option<String>| ns.as_deref() == Some(namespace);
    Objects {
        secrets: stores
            .secrets
            .state()
            .iter()
            .filter(|s| in_ns(s.namespace()))
            .map(|s| (s.name_any(), (**s).clone()))
            .collect(),
        config_maps: stores
            .config_maps
            .state()
            .iter()
            .filter(|c| in_ns(c.namespace()))
            .map(|c| (c.name_any(), (**c).clone()))
            .collect(),
    }
}

/// How a workload's pods stand, for its status.
#[derive(Default)]
struct Tally {
    replicas: i32,
    ready: i32,
    generation: i64,
    deadline: Duration,
}

/// Runs the agent until `shutdown` resolves, then stops every pod it started.
pub async fn run(
    client: Client,
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), crate::NodeError> {
    let podman = Podman::available().map_err(|message| crate::NodeError::Podman { args: "info".into(), message })?;
    podman.ensure_network(&config.network)?;
    let stores = Stores {
        deployments: watched(&client, &config.namespaces),
        statefulsets: watched(&client, &config.namespaces),
        services: watched(&client, &config.namespaces),
        secrets: watched(&client, &config.namespaces),
        config_maps: watched(&client, &config.namespaces),
    };
    for ready in [
        stores.deployments.wait_until_ready().await,
        stores.statefulsets.wait_until_ready().await,
        stores.services.wait_until_ready().await,
        stores.secrets.wait_until_ready().await,
        stores.config_maps.wait_until_ready().await,
    ] {
        ready.map_err(|e| crate::NodeError::Podman { args: "watch".into(), message: e.to_string() })?;
    }
    let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
    // When each workload generation was first seen not ready (for the progress deadline).
    let mut unready_since: BTreeMap<(Owner, i64), Instant> = BTreeMap::new();
    let mut written: BTreeMap<Owner, serde_json::Value> = BTreeMap::new();
    tokio::pin!(shutdown);
    loop {
        let desired = Desired::of_workloads(&stores, &config);
        tokio::task::block_in_place(|| sync_pods(&podman, &stores, &desired, &mut pods));
        let mut tallies: BTreeMap<Owner, Tally> = BTreeMap::new();
        for (key, want) in &desired {
            let tally = tallies.entry(want.owner.clone()).or_default();
            tally.replicas += 1;
            tally.generation = want.generation;
            tally.deadline = want.progress_deadline;
            tally.ready += i32::from(pods.get(key).is_some_and(|p| p.ready));
        }
        for (owner, tally) in &tallies {
            let since = *unready_since.entry((owner.clone(), tally.generation)).or_insert_with(Instant::now);
            let stuck = tally.ready < tally.replicas && since.elapsed() > tally.deadline;
            let status = workload_status(tally, stuck);
            if written.get(owner) != Some(&status) && write_status(&client, owner, &status).await {
                written.insert(owner.clone(), status);
            }
        }
        written.retain(|owner, _| tallies.contains_key(owner));
        unready_since.retain(|(owner, generation), _| {
            tallies.get(owner).is_some_and(|t| t.generation == *generation && t.ready < t.replicas)
        });
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(config.period) => {}
        }
    }
    tokio::task::block_in_place(|| pods.values().for_each(|pod| podman.stop_pod(&pod.running)));
    Ok(())
}

/// Starts, recreates, restarts and stops pods so that `pods` runs `desired`; probes readiness.
fn sync_pods(podman: &Podman, stores: &Stores, desired: &BTreeMap<String, Desired>, pods: &mut BTreeMap<String, Pod>) {
    let gone: Vec<String> = pods
        .iter()
        .filter(|(key, pod)| desired.get(*key).is_none_or(|d| d.fingerprint != pod.fingerprint))
        .map(|(key, _)| key.clone())
        .collect();
    for key in gone {
        if let Some(pod) = pods.remove(&key) {
            podman.stop_pod(&pod.running);
        }
    }
    // Each namespace's Secrets and ConfigMaps, copied out of the stores once per sync.
    let mut by_namespace: BTreeMap<&str, Objects> = BTreeMap::new();
    for (key, want) in desired {
        let objects = by_namespace.entry(&want.namespace).or_insert_with(|| objects_of(stores, &want.namespace));
        let spec = want.template.spec.clone().unwrap_or_default();
        match pods.get_mut(key) {
            Some(pod) if !podman.running(&pod.running) => {
                let log = podman.logs(&pod.running);
                eprintln!("[reco-node] {key} exited (restart {}); last log:\n{}", pod.restarts + 1, tail(&log, 20));
                podman.stop_pod(&pod.running);
                match podman.start_pod(&spec, &want.placement, objects) {
                    Ok(running) => {
                        pod.running = running;
                        pod.ready = false;
                        pod.restarts += 1;
                    }
                    Err(e) => eprintln!("[reco-node] {key}: {e}"),
                }
            }
            Some(pod) => {
                if let Err(e) = podman.refresh_files(&spec, &want.placement, objects) {
                    eprintln!("[reco-node] {key}: {e}");
                }
                pod.ready = podman.probe(&pod.running, ProbeKind::Readiness).is_none_or(|r| r.is_ok());
            }
            None => match podman.start_pod(&spec, &want.placement, objects) {
                Ok(running) => {
                    eprintln!("[reco-node] started {key} at {}", running.ip);
                    pods.insert(key.clone(), Pod { running, fingerprint: want.fingerprint, ready: false, restarts: 0 });
                }
                Err(e) => eprintln!("[reco-node] {key}: {e}"),
            },
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A Deployment's or StatefulSet's status as their controllers write it.
fn workload_status(tally: &Tally, stuck: bool) -> serde_json::Value {
    let all_ready = tally.ready == tally.replicas;
    let (progressing, reason) = match (all_ready, stuck) {
        (true, _) => ("True", "NewReplicaSetAvailable"),
        (false, true) => ("False", "ProgressDeadlineExceeded"),
        (false, false) => ("True", "ReplicaSetUpdated"),
    };
    json!({
        "observedGeneration": tally.generation,
        "replicas": tally.replicas,
        "updatedReplicas": tally.replicas,
        "readyReplicas": tally.ready,
        "availableReplicas": tally.ready,
        "unavailableReplicas": tally.replicas - tally.ready,
        "conditions": [
            {"type": "Available", "status": if tally.ready > 0 || tally.replicas == 0 { "True" } else { "False" },
             "reason": "MinimumReplicasAvailable", "message": format!("{} of {} pods ready", tally.ready, tally.replicas)},
            {"type": "Progressing", "status": progressing, "reason": reason,
             "message": if stuck { "pods not ready within the progress deadline (reco-node)".to_owned() } else { format!("{} of {} pods ready", tally.ready, tally.replicas) }},
        ],
    })
}

/// Writes a workload's status; whether it was written.
async fn write_status(client: &Client, owner: &Owner, status: &serde_json::Value) -> bool {
    let patch = Patch::Merge(json!({ "status": status }));
    let params = PatchParams::default();
    let result = match owner {
        Owner::Deployment { namespace, name } => {
            Api::<Deployment>::namespaced(client.clone(), namespace).patch_status(name, &params, &patch).await.map(drop)
        }
        Owner::StatefulSet { namespace, name } => {
            let mut status = status.clone();
            if let Some(map) = status.as_object_mut() {
                // A StatefulSet's status has no conditions of these kinds nor unavailableReplicas.
                map.remove("conditions");
                map.remove("unavailableReplicas");
                map.insert("currentReplicas".into(), map["replicas"].clone());
            }
            let patch = Patch::Merge(json!({ "status": status }));
            Api::<StatefulSet>::namespaced(client.clone(), namespace)
                .patch_status(name, &params, &patch)
                .await
                .map(drop)
        }
    };
    match result {
        Ok(()) => true,
        Err(kube::Error::Api(e)) if e.code == 404 => true,
        Err(e) => {
            eprintln!("[reco-node] status of {owner:?}: {e}");
            false
        }
    }
}
