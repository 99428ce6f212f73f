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
//!   `ProgressDeadlineExceeded` past the progress deadline);
//! - with [`AgentConfig::api_server`], forwards a port on the pod network to
//!   the API server and gives pods their service account's token (see
//!   [`crate::ApiAccess`]), so an operator runs in a pod as on a cluster;
//! - forwards each `NodePort` of a Service from `127.0.0.1:<nodePort>` to
//!   the ready pods it selects, a connection at a time, round robin (what
//!   kube-proxy does for node ports), so programs on the host reach them;
//! - with [`AgentConfig::prometheus_targets`], writes the ready pods that
//!   Services select and that carry `prometheus.io/scrape: "true"` to a
//!   Prometheus file service discovery file, one target per Service and pod
//!   with `job` = the Service's name (as a ServiceMonitor names it),
//!   `namespace`, `service` and `pod` labels.
//!
//! It writes no Pod objects: pods exist only as podman containers. Service
//! names resolve to every pod they select, ready or not; there are no
//! ClusterIPs, no EndpointSlices and no scheduling (one node, no resource
//! accounting).

use std::collections::BTreeMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PodTemplateSpec, Secret, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{ApiAccess, Objects, Placement, Podman, ProbeKind, RunningPod, forward};

/// Where the agent keeps pods' files and which network it runs them on.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Pods' volumes (`pods/`) and claims (`claims/`).
    pub state_dir: PathBuf,
    pub network: String,
    /// Namespaces to run workloads of; empty means all.
    pub namespaces: Vec<String>,
    pub period: Duration,
    /// `host:port` of the API server pods should reach (`None`: pods get no API access).
    pub api_server: Option<String>,
    /// The Prometheus file service discovery file to keep up to date.
    pub prometheus_targets: Option<PathBuf>,
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

impl AgentConfig {
    fn in_scope(&self, namespace: &str) -> bool {
        self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == namespace)
    }
}

impl Desired {
    fn of_workloads(stores: &Stores, config: &AgentConfig, api: Option<&ApiAccess>) -> BTreeMap<String, Desired> {
        let services = stores.services.state();
        let in_scope = |ns: &str| config.in_scope(ns);
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
                name: pod,
                namespace: namespace.clone(),
                network: config.network.clone(),
                aliases: aliases.clone(),
                pod_dir: config.state_dir.join("pods").join(&key),
                claims,
                api: api.cloned(),
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
    // The API server, seen from the pods (kept open while the agent runs).
    let (api, _api_backends, api_forwarder) = match &config.api_server {
        Some(upstream) => {
            let (access, backends, task) = forward_api_server(&podman, &config.network, upstream).await?;
            (Some(access), Some(backends), Some(task))
        }
        None => (None, None, None),
    };
    let mut node_ports = NodePorts::default();
    let mut targets_written = None;
    let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
    // When each workload generation was first seen not ready (for the progress deadline).
    let mut unready_since: BTreeMap<(Owner, i64), Instant> = BTreeMap::new();
    let mut written: BTreeMap<Owner, serde_json::Value> = BTreeMap::new();
    tokio::pin!(shutdown);
    loop {
        let desired = Desired::of_workloads(&stores, &config, api.as_ref());
        tokio::task::block_in_place(|| sync_pods(&podman, &stores, &desired, &mut pods));
        let services: Vec<Arc<Service>> = stores
            .services
            .state()
            .into_iter()
            .filter(|s| config.in_scope(&s.namespace().unwrap_or_default()))
            .collect();
        let endpoints = ready_endpoints(&services, &desired, &pods);
        node_ports.sync(&services, &endpoints);
        if let Some(path) = &config.prometheus_targets {
            let targets = prometheus_targets(&endpoints);
            if targets_written.as_ref() != Some(&targets) {
                match write_atomic(path, targets.as_bytes()) {
                    Ok(()) => targets_written = Some(targets),
                    Err(e) => eprintln!("[reco-node] {}: {e}", path.display()),
                }
            }
        }
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
    node_ports.close_all();
    if let Some(task) = api_forwarder {
        task.abort();
    }
    tokio::task::block_in_place(|| pods.values().for_each(|pod| podman.stop_pod(&pod.running)));
    Ok(())
}

/// Listens on the network's gateway address (any free port) and forwards to
/// the API server at `upstream` (`host:port`).
async fn forward_api_server(
    podman: &Podman,
    network: &str,
    upstream: &str,
) -> Result<(ApiAccess, watch::Sender<Vec<SocketAddr>>, JoinHandle<()>), crate::NodeError> {
    let failed = |message: String| crate::NodeError::Podman { args: format!("forward to {upstream}"), message };
    let host_ip = podman.network_gateway(network)?;
    let ip: IpAddr = host_ip.parse().map_err(|_| failed(format!("network gateway {host_ip:?} is not an address")))?;
    let upstreams: Vec<SocketAddr> =
        tokio::net::lookup_host(upstream).await.map_err(|e| failed(e.to_string()))?.collect();
    let listener = forward::listen(ip, 0).map_err(|e| failed(format!("listening on {ip}: {e}")))?;
    let port = listener.local_addr().map_err(|e| failed(e.to_string()))?.port();
    eprintln!("[reco-node] pods reach the API server {upstream} at {host_ip}:{port} ({})", crate::API_HOST);
    let (backends, receiver) = watch::channel(upstreams);
    Ok((ApiAccess { host_ip, port }, backends, forward::spawn(listener, receiver)))
}

/// A ready pod that a Service selects.
struct Endpoint<'a> {
    pod: &'a Desired,
    ip: String,
}

/// The ready pods each Service selects, by `(namespace, name)`.
fn ready_endpoints<'a>(
    services: &[Arc<Service>],
    desired: &'a BTreeMap<String, Desired>,
    pods: &BTreeMap<String, Pod>,
) -> BTreeMap<(String, String), Vec<Endpoint<'a>>> {
    let mut endpoints = BTreeMap::new();
    for service in services {
        let namespace = service.namespace().unwrap_or_default();
        let Some(selector) = service.spec.as_ref().and_then(|s| s.selector.as_ref()).filter(|s| !s.is_empty()) else {
            continue;
        };
        let ready: Vec<Endpoint> = desired
            .iter()
            .filter(|(_, d)| d.namespace == namespace)
            .filter(|(_, d)| {
                let labels = d.template.metadata.as_ref().and_then(|m| m.labels.as_ref());
                selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            })
            .filter_map(|(key, d)| {
                let pod = pods.get(key).filter(|p| p.ready && p.fingerprint == d.fingerprint)?;
                Some(Endpoint { pod: d, ip: pod.running.ip.clone() })
            })
            .collect();
        endpoints.insert((namespace, service.name_any()), ready);
    }
    endpoints
}

/// The container port a Service port sends to on `pod`.
fn target_port(port: &ServicePort, pod: &Desired) -> Option<u16> {
    let number = match &port.target_port {
        None => port.port,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(name)) => {
            pod.template
                .spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(name))?
                .container_port
        }
    };
    u16::try_from(number).ok()
}

/// An open port: where its forwarder sends connections, and the forwarder.
type Forwarding = (watch::Sender<Vec<SocketAddr>>, JoinHandle<()>);

/// The node ports open on 127.0.0.1, by `(namespace, service, nodePort)`.
#[derive(Default)]
struct NodePorts {
    open: BTreeMap<(String, String, i32), Forwarding>,
}

impl NodePorts {
    /// Opens the node ports of `services`, closes those gone, points each at its ready pods.
    fn sync(&mut self, services: &[Arc<Service>], endpoints: &BTreeMap<(String, String), Vec<Endpoint>>) {
        let mut wanted = BTreeMap::new();
        for service in services.iter().filter(|s| s.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("NodePort"))
        {
            let key = (service.namespace().unwrap_or_default(), service.name_any());
            let ready = endpoints.get(&key).map(Vec::as_slice).unwrap_or_default();
            for port in service.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
                let Some(node_port) = port.node_port else { continue };
                let backends: Vec<SocketAddr> = ready
                    .iter()
                    .filter_map(|e| Some(SocketAddr::new(e.ip.parse().ok()?, target_port(port, e.pod)?)))
                    .collect();
                wanted.insert((key.0.clone(), key.1.clone(), node_port), backends);
            }
        }
        self.open.retain(|key, (_, task)| {
            let keep = wanted.contains_key(key);
            if !keep {
                task.abort();
            }
            keep
        });
        for (key, backends) in wanted {
            if let Some((sender, _)) = self.open.get(&key) {
                sender.send_if_modified(|current| {
                    let changed = *current != backends;
                    *current = backends;
                    changed
                });
                continue;
            }
            let localhost = IpAddr::from([127, 0, 0, 1]);
            match u16::try_from(key.2).map_err(|e| e.to_string()).and_then(|port| {
                forward::listen(localhost, port).map_err(|e| format!("listening on 127.0.0.1:{port}: {e}"))
            }) {
                Ok(listener) => {
                    eprintln!("[reco-node] Service {}/{} on node port 127.0.0.1:{}", key.0, key.1, key.2);
                    let (sender, receiver) = watch::channel(backends);
                    self.open.insert(key, (sender, forward::spawn(listener, receiver)));
                }
                Err(e) => eprintln!("[reco-node] Service {}/{}: {e}", key.0, key.1),
            }
        }
    }

    fn close_all(&mut self) {
        std::mem::take(&mut self.open).into_values().for_each(|(_, task)| task.abort());
    }
}

/// The Prometheus file service discovery document for `endpoints`: the
/// ready pods annotated `prometheus.io/scrape: "true"`, at their
/// `prometheus.io/port` and `prometheus.io/path`. Sorted, so that an
/// unchanged set writes the same text.
fn prometheus_targets(endpoints: &BTreeMap<(String, String), Vec<Endpoint>>) -> String {
    let mut groups = Vec::new();
    for ((namespace, service), ready) in endpoints {
        for endpoint in ready {
            let annotations = endpoint.pod.template.metadata.as_ref().and_then(|m| m.annotations.as_ref());
            let annotation = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
            let Some(port) =
                annotation("prometheus.io/port").filter(|_| annotation("prometheus.io/scrape") == Some("true"))
            else {
                continue;
            };
            groups.push(json!({
                "targets": [format!("{}:{port}", endpoint.ip)],
                "labels": {
                    "job": service,
                    "namespace": namespace,
                    "service": service,
                    "pod": endpoint.pod.placement.name,
                    "__metrics_path__": annotation("prometheus.io/path").unwrap_or("/metrics"),
                },
            }));
        }
    }
    serde_json::to_string_pretty(&groups).unwrap_or_default()
}

/// Writes `path` by a rename, so that Prometheus never reads half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
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
