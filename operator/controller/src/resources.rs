//! Pure builders from a pipeline (and its serving versions) to the
//! Kubernetes objects that run it. No I/O: the reconciler applies what these
//! return with server-side apply, and tests compare their fields.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, Container, ContainerPort, EmptyDirVolumeSource, EnvFromSource, EnvVar, HTTPGetAction,
    KeyToPath, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, Secret, SecretEnvSource, SecretVolumeSource, SecurityContext, Service,
    ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use reco_api::{
    ComponentSpec, FeatureBackend, ModelVersion, PIPELINE_LABEL, RecommenderPipeline, VERSION_LABEL, VectorStore,
};
use reco_contracts::names::{MAX_STATEFULSET, object_name, object_name_within};
use reco_contracts::routing::{ENDPOINTS_FILE, ROUTING_FILE, RoutingTable, VersionEndpoints};
use serde::Serialize;

/// Port of every service's HTTP endpoint (client API, `/metrics`, probes).
pub const HTTP_PORT: i32 = 8080;
/// Port of every service's gRPC endpoint.
pub const GRPC_PORT: i32 = 50051;
/// Where gateways mount the routing ConfigMap; they hot-reload it.
const ROUTING_MOUNT: &str = "/etc/reco/routing";
/// Key of the token signing key in the token Secret.
pub const TOKEN_KEY: &str = "token-key";
/// Where gateways mount the token Secret.
const TOKEN_MOUNT: &str = "/etc/reco/token";
/// `--data-dir` of features (snapshot, event log) and of retrieval (embedded
/// vector index): the only place besides `/tmp` a service writes, so the one
/// writable volume on a read-only root filesystem.
const DATA_DIR: &str = "/var/lib/reco";
/// Where retrieval and ranking download their version (`--artifact-cache`).
const ARTIFACT_CACHE_DIR: &str = "/var/cache/reco/artifacts";
/// Group of the services image's user (65532): volumes are made writable to it.
const SERVICES_GID: i64 = 65532;
const MANAGED_BY: &str = "reco-operator";
/// The services release this operator was built with: the default of `--services-image`.
pub const DEFAULT_SERVICES_IMAGE: &str = concat!("ghcr.io/reco-seed/reco:", env!("CARGO_PKG_VERSION"));

/// What the operator's flags decide for every pipeline that does not. Kept
/// out of the CRD schema, whose defaults are written into each object at
/// admission and would pin it to the release that created it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Defaults {
    /// Image of the reco services (`--services-image`).
    pub services_image: String,
}

impl Default for Defaults {
    fn default() -> Self {
        Self { services_image: DEFAULT_SERVICES_IMAGE.to_owned() }
    }
}

/// A deployed part of a pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Gateway,
    Features,
    Retrieval,
    Ranking,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Features => "features",
            Self::Retrieval => "retrieval",
            Self::Ranking => "ranking",
        }
    }

    /// The gateway only reads small files; the others load model artifacts,
    /// build a vector index or replay a snapshot.
    fn default_startup_timeout_seconds(self) -> u32 {
        match self {
            Self::Gateway => 300,
            Self::Features | Self::Retrieval | Self::Ranking => 1800,
        }
    }

    fn default_replicas(self) -> i32 {
        match self {
            Self::Gateway => 2,
            Self::Features | Self::Retrieval | Self::Ranking => 1,
        }
    }

    /// Requests and limits when the pipeline sets none: the model servers
    /// hold embeddings and libtorch, the gateway and features are lighter.
    fn default_resources(self) -> ResourceRequirements {
        let (cpu_req, mem_req, cpu_lim, mem_lim) = match self {
            Self::Gateway => ("100m", "128Mi", "1", "512Mi"),
            Self::Features => ("100m", "256Mi", "1", "1Gi"),
            Self::Retrieval | Self::Ranking => ("250m", "512Mi", "2", "2Gi"),
        };
        let q = |cpu: &str, mem: &str| {
            BTreeMap::from([
                ("cpu".to_owned(), Quantity(cpu.to_owned())),
                ("memory".to_owned(), Quantity(mem.to_owned())),
            ])
        };
        ResourceRequirements {
            requests: Some(q(cpu_req, mem_req)),
            limits: Some(q(cpu_lim, mem_lim)),
            ..Default::default()
        }
    }
}

/// Name of a per-version component's Deployment and Service.
pub fn version_object_name(pipeline: &str, component: Component, version: &str) -> String {
    object_name(&[pipeline, component.as_str(), version])
}

/// Name of the routing ConfigMap.
pub fn routing_configmap_name(pipeline: &str) -> String {
    object_name(&[pipeline, "routing"])
}

/// The labels every object of a component carries; the first four select its pods.
pub fn labels(pipeline: &str, component: Component, version: Option<&str>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "reco".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), pipeline.to_owned()),
        ("app.kubernetes.io/component".to_owned(), component.as_str().to_owned()),
        (PIPELINE_LABEL.to_owned(), pipeline.to_owned()),
        ("app.kubernetes.io/part-of".to_owned(), "reco".to_owned()),
        ("app.kubernetes.io/managed-by".to_owned(), MANAGED_BY.to_owned()),
    ]);
    if let Some(version) = version {
        labels.insert(VERSION_LABEL.to_owned(), version.to_owned());
    }
    labels
}

/// The conventional annotations that let a Prometheus without the Prometheus
/// Operator find every reco pod's `/metrics` (the chart's PodMonitor does the
/// same for the gateways with it).
fn scrape_annotations() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("prometheus.io/scrape".to_owned(), "true".to_owned()),
        ("prometheus.io/port".to_owned(), HTTP_PORT.to_string()),
        ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
    ])
}

fn selector(pipeline: &str, component: Component, version: Option<&str>) -> BTreeMap<String, String> {
    let mut labels = labels(pipeline, component, version);
    labels.retain(|k, _| k != "app.kubernetes.io/part-of" && k != "app.kubernetes.io/managed-by");
    labels
}

fn metadata(p: &RecommenderPipeline, name: String, component: Component, version: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: p.metadata.namespace.clone(),
        labels: Some(labels(&p.name_unchecked(), component, version)),
        owner_references: p.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), ..Default::default() }),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_owned(), ..Default::default() }),
        ..Default::default()
    }
}

fn http_probe(path: &str, period_seconds: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".to_owned()),
            ..Default::default()
        }),
        period_seconds: Some(period_seconds),
        ..Default::default()
    }
}

/// How often the startup probe looks.
const STARTUP_PERIOD_SECONDS: i32 = 10;

/// Holds liveness and readiness off until `/healthz` answers, for up to the
/// component's startup timeout: the services bind their HTTP port only once
/// their model and index are loaded, which liveness alone (30 s) would not wait for.
fn startup_probe(component: Component, settings: &ComponentSpec) -> Probe {
    let timeout = settings.startup_timeout_seconds.unwrap_or(component.default_startup_timeout_seconds());
    let periods = timeout.div_ceil(STARTUP_PERIOD_SECONDS.unsigned_abs()).max(1);
    Probe {
        failure_threshold: Some(i32::try_from(periods).unwrap_or(i32::MAX)),
        ..http_probe("/healthz", STARTUP_PERIOD_SECONDS)
    }
}

/// What differs between the components' pods.
struct PodPlan<'a> {
    component: Component,
    version: Option<&'a str>,
    settings: &'a ComponentSpec,
    image: String,
    args: Vec<String>,
    extra_volumes: Vec<(Volume, VolumeMount)>,
    /// Mounts of volumes that a StatefulSet's claims provide.
    claim_mounts: Vec<VolumeMount>,
    /// A Secret whose keys become environment variables.
    env_secret: Option<String>,
}

/// Ports name their protocol although TCP is the default: `protocol` is a key
/// of the ports list, and server-side apply before Kubernetes 1.22 refuses a
/// list entry without it (500 "associative list with keys has an element that
/// omits key field protocol") instead of defaulting it.
const TCP: &str = "TCP";

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some(TCP.to_owned()),
        ..Default::default()
    }
}

/// An emptyDir named `name`, mounted writable at `mount_path`.
fn scratch_volume(name: &str, mount_path: &str) -> (Volume, VolumeMount) {
    (
        Volume { name: name.to_owned(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() },
        VolumeMount { name: name.to_owned(), mount_path: mount_path.to_owned(), ..Default::default() },
    )
}

fn pod_template(p: &RecommenderPipeline, plan: PodPlan<'_>) -> PodTemplateSpec {
    let (volumes, mut mounts): (Vec<_>, Vec<_>) =
        std::iter::once(scratch_volume("tmp", "/tmp")).chain(plan.extra_volumes).unzip();
    mounts.extend(plan.claim_mounts);
    let container = Container {
        name: plan.component.as_str().to_owned(),
        image: Some(plan.image),
        args: Some(plan.args),
        ports: Some(vec![container_port("http", HTTP_PORT), container_port("grpc", GRPC_PORT)]),
        env: Some(vec![EnvVar { name: "RUST_LOG".to_owned(), value: Some("info".to_owned()), ..Default::default() }]),
        env_from: plan.env_secret.map(|name| {
            vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource { name, optional: Some(false) }),
                ..Default::default()
            }]
        }),
        resources: Some(plan.settings.resources.clone().unwrap_or_else(|| plan.component.default_resources())),
        startup_probe: Some(startup_probe(plan.component, plan.settings)),
        liveness_probe: Some(http_probe("/healthz", 10)),
        readiness_probe: Some(http_probe("/readyz", 5)),
        security_context: Some(restricted_security_context()),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(&p.name_unchecked(), plan.component, plan.version)),
            annotations: Some(scrape_annotations()),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(volumes),
            automount_service_account_token: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                // A persistent volume is often root-owned: the group makes it writable.
                fs_group: Some(SERVICES_GID),
                fs_group_change_policy: Some("OnRootMismatch".to_owned()),
                seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_owned(), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn pod_selector(p: &RecommenderPipeline, component: Component, version: Option<&str>) -> LabelSelector {
    LabelSelector { match_labels: Some(selector(&p.name_unchecked(), component, version)), ..Default::default() }
}

fn deployment(p: &RecommenderPipeline, name: String, plan: PodPlan<'_>) -> Deployment {
    let (component, version) = (plan.component, plan.version);
    Deployment {
        metadata: metadata(p, name, component, version),
        spec: Some(DeploymentSpec {
            replicas: Some(plan.settings.replicas.unwrap_or(component.default_replicas())),
            selector: pod_selector(p, component, version),
            template: pod_template(p, plan),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn service(p: &RecommenderPipeline, name: String, component: Component, version: Option<&str>) -> Service {
    let port = |name: &str, port: i32| ServicePort {
        protocol: Some(TCP.to_owned()),
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::String(name.to_owned())),
        ..Default::default()
    };
    Service {
        metadata: metadata(p, name, component, version),
        spec: Some(ServiceSpec {
            selector: Some(selector(&p.name_unchecked(), component, version)),
            ports: Some(vec![port("http", HTTP_PORT), port("grpc", GRPC_PORT)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The component's image, else the pipeline's, else the operator's.
fn image_of(p: &RecommenderPipeline, settings: &ComponentSpec, defaults: &Defaults) -> String {
    let image = settings.image.as_ref().or(p.spec.image.as_ref());
    image.cloned().unwrap_or_else(|| defaults.services_image.clone())
}

fn service_url(p: &RecommenderPipeline, name: &str) -> String {
    let namespace = p.metadata.namespace.as_deref().unwrap_or("default");
    format!("http://{name}.{namespace}.svc:{GRPC_PORT}")
}

/// The Secret that signs the pipeline's recommendation tokens: the one the
/// spec names, else `<pipeline>-token`.
pub fn token_secret_name(p: &RecommenderPipeline) -> String {
    p.spec.gateway.token_key_secret.clone().unwrap_or_else(|| object_name(&[&p.name_unchecked(), "token"]))
}

/// The default token Secret with a key from `key` (random, from the caller;
/// only called when one is built), when the spec names none. The operator
/// only ever creates it, so a key in use is never replaced.
pub fn default_token_secret(p: &RecommenderPipeline, key: impl FnOnce() -> String) -> Option<Secret> {
    p.spec.gateway.token_key_secret.is_none().then(|| Secret {
        metadata: metadata(p, token_secret_name(p), Component::Gateway, None),
        string_data: Some(BTreeMap::from([(TOKEN_KEY.to_owned(), key())])),
        ..Default::default()
    })
}

/// The gateway Deployment: it mounts the routing ConfigMap (and hot-reloads
/// it) and the token Secret, so that every replica signs with the same key.
/// The Redis gateway replicas share to count each click once: the one the
/// spec names, else the feature store's.
fn dedup_redis_url(p: &RecommenderPipeline) -> Option<&str> {
    let features = &p.spec.features;
    let feature_store = features.redis_url.as_deref().filter(|_| features.backend == FeatureBackend::Redis);
    p.spec.gateway.dedup_redis_url.as_deref().or(feature_store)
}

pub fn gateway_deployment(p: &RecommenderPipeline, defaults: &Defaults) -> Deployment {
    let pipeline = p.name_unchecked();
    let spec = &p.spec.gateway;
    let routing = routing_configmap_name(&pipeline);
    let mut args = vec![
        "serve".to_owned(),
        "gateway".to_owned(),
        format!("--pipeline={pipeline}"),
        format!("--http=0.0.0.0:{HTTP_PORT}"),
        format!("--grpc=0.0.0.0:{GRPC_PORT}"),
        format!("--routing-file={ROUTING_MOUNT}/{ROUTING_FILE}"),
        format!("--endpoints-file={ROUTING_MOUNT}/{ENDPOINTS_FILE}"),
        format!("--token-key-file={TOKEN_MOUNT}/{TOKEN_KEY}"),
        format!("--features-url={}", service_url(p, &features_service_name(&pipeline))),
        format!("--deadline-ms={}", spec.deadline_ms),
        format!("--cache-ttl-seconds={}", spec.cache_ttl_seconds),
        format!("--mmr-lambda={}", p.spec.diversity.mmr_lambda),
        format!("--max-per-category={}", p.spec.diversity.max_per_category),
        format!("--freshness-boost={}", p.spec.diversity.freshness_boost),
    ];
    args.extend(dedup_redis_url(p).map(|url| format!("--dedup-redis-url={url}")));
    let routing_volume = read_only_volume(
        "routing",
        ROUTING_MOUNT,
        Volume {
            config_map: Some(k8s_openapi::api::core::v1::ConfigMapVolumeSource {
                name: routing.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    deployment(
        p,
        object_name(&[&pipeline, "gateway"]),
        PodPlan {
            component: Component::Gateway,
            version: None,
            settings: &spec.component,
            image: image_of(p, &spec.component, defaults),
            args,
            extra_volumes: vec![routing_volume, token_volume(p)],
            claim_mounts: Vec::new(),
            env_secret: None,
        },
    )
}

fn token_volume(p: &RecommenderPipeline) -> (Volume, VolumeMount) {
    read_only_volume(
        "token",
        TOKEN_MOUNT,
        Volume {
            secret: Some(SecretVolumeSource {
                secret_name: Some(token_secret_name(p)),
                items: Some(vec![KeyToPath {
                    key: TOKEN_KEY.to_owned(),
                    path: TOKEN_KEY.to_owned(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
}

/// `source` (a Volume with its source set) named `name`, mounted read-only at `mount_path`.
fn read_only_volume(name: &str, mount_path: &str, source: Volume) -> (Volume, VolumeMount) {
    (
        Volume { name: name.to_owned(), ..source },
        VolumeMount {
            name: name.to_owned(),
            mount_path: mount_path.to_owned(),
            read_only: Some(true),
            ..Default::default()
        },
    )
}

/// Name of the volume claim (and mount) of the features pods' data.
const DATA_CLAIM: &str = "data";

/// Name of the features StatefulSet, short enough for its pods' labels.
pub fn features_statefulset_name(pipeline: &str) -> String {
    object_name_within(&[pipeline, "features"], MAX_STATEFULSET)
}

/// The feature service, which also ingests events: a StatefulSet, so that
/// each pod keeps its snapshot and event log (the training data) on a
/// persistent volume of its own across restarts and reschedules, and no two
/// pods ever write one volume.
pub fn features_statefulset(p: &RecommenderPipeline, defaults: &Defaults) -> StatefulSet {
    let pipeline = p.name_unchecked();
    let spec = &p.spec.features;
    let mut args = vec![
        "serve".to_owned(),
        "features".to_owned(),
        format!("--pipeline={pipeline}"),
        format!("--http=0.0.0.0:{HTTP_PORT}"),
        format!("--grpc=0.0.0.0:{GRPC_PORT}"),
        format!("--backend={}", serde_variant(&spec.backend)),
        format!("--event-sink={}", serde_variant(&p.spec.events.sink)),
        format!("--data-dir={DATA_DIR}"),
    ];
    args.extend(spec.redis_url.iter().map(|url| format!("--redis-url={url}")));
    args.extend(p.spec.events.kafka_brokers.iter().map(|b| format!("--kafka-brokers={b}")));
    args.extend(p.spec.events.kafka_topic.iter().map(|t| format!("--kafka-topic={t}")));
    if let Some(seed) = &spec.seed {
        args.push(format!("--seed-from={}", seed.uri));
        args.push(format!("--seed-holdout={}", seed.holdout_fraction));
    }
    let plan = PodPlan {
        component: Component::Features,
        version: None,
        settings: &spec.component,
        image: image_of(p, &spec.component, defaults),
        args,
        extra_volumes: Vec::new(),
        claim_mounts: vec![VolumeMount {
            name: DATA_CLAIM.to_owned(),
            mount_path: DATA_DIR.to_owned(),
            ..Default::default()
        }],
        // The seed is read with the artifacts' credentials.
        env_secret: spec.seed.as_ref().and(p.spec.artifacts.credentials_secret.clone()),
    };
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta { name: Some(DATA_CLAIM.to_owned()), ..Default::default() },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            storage_class_name: spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_owned(), Quantity(spec.storage.size.clone()))])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    StatefulSet {
        metadata: metadata(p, features_statefulset_name(&pipeline), Component::Features, None),
        spec: Some(StatefulSetSpec {
            replicas: Some(spec.component.replicas.unwrap_or(Component::Features.default_replicas())),
            selector: pod_selector(p, Component::Features, None),
            service_name: Some(features_service_name(&pipeline)),
            template: pod_template(p, plan),
            volume_claim_templates: Some(vec![claim]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Retrieval or ranking for one model version.
pub fn version_deployment(
    p: &RecommenderPipeline,
    v: &ModelVersion,
    component: Component,
    defaults: &Defaults,
) -> Deployment {
    let pipeline = p.name_unchecked();
    let version = v.name_unchecked();
    let settings = match component {
        Component::Retrieval => &p.spec.retrieval.component,
        _ => &p.spec.ranking.component,
    };
    let mut args = vec![
        "serve".to_owned(),
        component.as_str().to_owned(),
        format!("--pipeline={pipeline}"),
        format!("--model-version={version}"),
        format!("--model-uri={}", v.spec.artifact_uri),
        format!("--artifact-cache={ARTIFACT_CACHE_DIR}"),
        format!("--http=0.0.0.0:{HTTP_PORT}"),
        format!("--grpc=0.0.0.0:{GRPC_PORT}"),
    ];
    args.extend(v.spec.artifact_digest.iter().map(|digest| format!("--artifact-digest={digest}")));
    // Downloaded artifacts live as long as the pod: a restarted container finds them.
    let mut extra_volumes = vec![scratch_volume("artifacts", ARTIFACT_CACHE_DIR)];
    match component {
        Component::Retrieval => {
            let r = &p.spec.retrieval;
            args.push(format!("--candidates={}", r.candidates));
            args.push(format!("--vector-store={}", serde_variant(&r.vector_store)));
            args.extend(r.qdrant_url.iter().map(|url| format!("--qdrant-url={url}")));
            if r.vector_store == VectorStore::Embedded {
                // The index is rebuilt from the artifacts at start: scratch space is enough.
                args.push(format!("--data-dir={DATA_DIR}"));
                extra_volumes.push(scratch_volume("data", DATA_DIR));
            }
        }
        _ => {
            args.push(format!("--batch-size={}", p.spec.ranking.batch_size));
            let weights: Vec<String> = p.spec.ranking.value_weights.iter().map(|(k, w)| format!("{k}={w}")).collect();
            args.push(format!("--value-weights={}", weights.join(",")));
        }
    }
    let image = v.spec.image.clone().unwrap_or_else(|| image_of(p, settings, defaults));
    deployment(
        p,
        version_object_name(&pipeline, component, &version),
        PodPlan {
            component,
            version: Some(&version),
            settings,
            image,
            args,
            extra_volumes,
            claim_mounts: Vec::new(),
            env_secret: p.spec.artifacts.credentials_secret.clone(),
        },
    )
}

pub fn gateway_service(p: &RecommenderPipeline) -> Service {
    service(p, gateway_service_name(p), Component::Gateway, None)
}

/// The name of a pipeline's gateway Service (and so the `job` of a
/// ServiceMonitor selecting it).
pub fn gateway_service_name(p: &RecommenderPipeline) -> String {
    object_name(&[&p.name_any(), "gateway"])
}

/// Name of the features Service, which gateways call.
pub fn features_service_name(pipeline: &str) -> String {
    object_name(&[pipeline, "features"])
}

pub fn features_service(p: &RecommenderPipeline) -> Service {
    service(p, features_service_name(&p.name_unchecked()), Component::Features, None)
}

pub fn version_service(p: &RecommenderPipeline, version: &str, component: Component) -> Service {
    let pipeline = p.name_unchecked();
    service(p, version_object_name(&pipeline, component, version), component, Some(version))
}

/// The routing ConfigMap: the table gateways route by, and where each
/// version's services are.
pub fn routing_configmap(p: &RecommenderPipeline, routing: &RoutingTable, versions: &[&str]) -> ConfigMap {
    let pipeline = p.name_unchecked();
    let endpoints: BTreeMap<&str, VersionEndpoints> = versions
        .iter()
        .map(|v| {
            let url = |c| service_url(p, &version_object_name(&pipeline, c, v));
            (*v, VersionEndpoints { retrieval: url(Component::Retrieval), ranking: url(Component::Ranking) })
        })
        .collect();
    ConfigMap {
        metadata: metadata(p, routing_configmap_name(&pipeline), Component::Gateway, None),
        data: Some(BTreeMap::from([
            (ROUTING_FILE.to_owned(), to_yaml(routing)),
            (ENDPOINTS_FILE.to_owned(), to_yaml(&endpoints)),
        ])),
        ..Default::default()
    }
}

/// YAML of the routing data: plain strings and numbers, which always serialize.
fn to_yaml<T: Serialize>(value: &T) -> String {
    serde_saphyr::to_string(value).expect("routing data always serializes")
}

/// The enum variant's name as serde writes it (`Embedded`, `Redis`, ...), lower-cased for flags.
fn serde_variant<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_lowercase)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reco_api::{ModelVersionSpec, RecommenderPipelineSpec};

    fn pipeline(spec: serde_json::Value) -> RecommenderPipeline {
        let spec: RecommenderPipelineSpec = serde_json::from_value(spec).unwrap();
        let mut p = RecommenderPipeline::new("explore", spec);
        p.metadata.namespace = Some("reco".into());
        p.metadata.uid = Some("uid-1".into());
        p
    }

    fn version(name: &str, image: Option<&str>) -> ModelVersion {
        ModelVersion::new(
            name,
            ModelVersionSpec {
                pipeline: "explore".into(),
                artifact_uri: format!("s3://models/{name}"),
                offline_metrics: Default::default(),
                artifact_digest: None,
                image: image.map(str::to_owned),
            },
        )
    }

    /// What has a pod template: Deployments, StatefulSets, templates.
    trait Workload {
        fn template(&self) -> &PodTemplateSpec;
    }

    impl Workload for Deployment {
        fn template(&self) -> &PodTemplateSpec {
            &self.spec.as_ref().unwrap().template
        }
    }

    impl Workload for StatefulSet {
        fn template(&self) -> &PodTemplateSpec {
            &self.spec.as_ref().unwrap().template
        }
    }

    impl Workload for PodTemplateSpec {
        fn template(&self) -> &PodTemplateSpec {
            self
        }
    }

    fn container(w: &impl Workload) -> &Container {
        &w.template().spec.as_ref().unwrap().containers[0]
    }

    #[test]
    fn gateway_replicas_share_a_redis_to_count_each_click_once() {
        let args = |spec: serde_json::Value| {
            let deployment = gateway_deployment(&pipeline(spec), &Defaults::default());
            container(&deployment).args.clone().unwrap_or_default()
        };
        let dedup = |args: Vec<String>| args.into_iter().find(|arg| arg.starts_with("--dedup-redis-url"));
        assert_eq!(dedup(args(serde_json::json!({}))), None, "embedded: each replica remembers its own");
        let redis = serde_json::json!({"features": {"backend": "Redis", "redisUrl": "redis://features:6379"}});
        assert_eq!(dedup(args(redis)).as_deref(), Some("--dedup-redis-url=redis://features:6379"));
        let named = serde_json::json!({
            "features": {"backend": "Redis", "redisUrl": "redis://features:6379"},
            "gateway": {"dedupRedisUrl": "redis://dedup:6379"},
        });
        assert_eq!(dedup(args(named)).as_deref(), Some("--dedup-redis-url=redis://dedup:6379"));
    }

    #[test]
    fn gateways_share_the_token_secret_the_operator_creates_unless_the_spec_names_one() {
        let p = pipeline(serde_json::json!({}));
        let d = gateway_deployment(&p, &Defaults::default());
        assert!(
            container(&d).args.as_ref().unwrap().contains(&"--token-key-file=/etc/reco/token/token-key".to_owned())
        );
        let volumes = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().volumes.clone().unwrap();
        let token = volumes.iter().find(|v| v.name == "token").and_then(|v| v.secret.clone()).unwrap();
        assert_eq!(token.secret_name.as_deref(), Some("explore-token"));
        let mounts = container(&d).volume_mounts.clone().unwrap();
        assert!(
            mounts.iter().any(|m| m.name == "token" && m.mount_path == "/etc/reco/token" && m.read_only == Some(true))
        );

        let secret = default_token_secret(&p, || "k".repeat(64)).unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some("explore-token"));
        assert_eq!(secret.metadata.owner_references.as_ref().unwrap()[0].uid, "uid-1");
        assert_eq!(secret.string_data.unwrap()[TOKEN_KEY], "k".repeat(64));

        let own = pipeline(serde_json::json!({"gateway": {"tokenKeySecret": "shared-signing"}}));
        assert_eq!(token_secret_name(&own), "shared-signing");
        assert!(
            default_token_secret(&own, || unreachable!("no key is drawn")).is_none(),
            "a Secret the user names is never written"
        );
    }

    #[test]
    fn selectors_match_the_pod_labels_and_pick_one_version() {
        let p = pipeline(serde_json::json!({}));
        let d = version_deployment(&p, &version("v2", None), Component::Retrieval, &Defaults::default());
        let spec = d.spec.unwrap();
        let selector = spec.selector.match_labels.unwrap();
        let pod_labels = spec.template.metadata.unwrap().labels.unwrap();
        assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
        assert_eq!(selector.get(VERSION_LABEL).map(String::as_str), Some("v2"));
        let service = version_service(&p, "v2", Component::Retrieval);
        assert_eq!(service.spec.unwrap().selector.unwrap(), selector);
    }

    #[test]
    fn every_object_is_owned_by_its_pipeline() {
        let p = pipeline(serde_json::json!({}));
        let routing = RoutingTable::default();
        let metas = [
            gateway_deployment(&p, &Defaults::default()).metadata,
            features_statefulset(&p, &Defaults::default()).metadata,
            gateway_service(&p).metadata,
            features_service(&p).metadata,
            routing_configmap(&p, &routing, &[]).metadata,
        ];
        for meta in metas {
            let owner = &meta.owner_references.unwrap()[0];
            assert_eq!((owner.uid.as_str(), owner.controller), ("uid-1", Some(true)));
            assert_eq!(meta.namespace.as_deref(), Some("reco"));
        }
    }

    #[test]
    fn images_resources_and_replicas_follow_the_spec_then_the_defaults() {
        let p = pipeline(serde_json::json!({
            "image": "registry.example/reco:1.2.3",
            "retrieval": {"replicas": 3, "image": "registry.example/retrieval:9",
                          "resources": {"limits": {"cpu": "4", "memory": "8Gi"}}},
        }));
        let retrieval = version_deployment(&p, &version("v1", None), Component::Retrieval, &Defaults::default());
        assert_eq!(retrieval.spec.as_ref().unwrap().replicas, Some(3));
        assert_eq!(container(&retrieval).image.as_deref(), Some("registry.example/retrieval:9"));
        let limits = container(&retrieval).resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["memory"], Quantity("8Gi".into()));
        // A version's own image wins over the component's.
        let custom = version_deployment(
            &p,
            &version("v2", Some("registry.example/custom:2")),
            Component::Ranking,
            &Defaults::default(),
        );
        assert_eq!(container(&custom).image.as_deref(), Some("registry.example/custom:2"));
        // Components without settings take the pipeline image and the defaults.
        let gateway = gateway_deployment(&p, &Defaults::default());
        assert_eq!(container(&gateway).image.as_deref(), Some("registry.example/reco:1.2.3"));
        assert_eq!(gateway.spec.as_ref().unwrap().replicas, Some(2));
        assert_eq!(container(&gateway).resources, Some(Component::Gateway.default_resources()));
    }

    fn pod(w: &impl Workload) -> &PodSpec {
        w.template().spec.as_ref().unwrap()
    }

    /// Writable mount paths of a pod's container, and whether its root filesystem is read-only.
    fn writable_paths(d: &impl Workload) -> (Vec<String>, Option<bool>) {
        let c = container(d);
        let paths = c.volume_mounts.iter().flatten().filter(|m| m.read_only != Some(true));
        let root = c.security_context.as_ref().and_then(|s| s.read_only_root_filesystem);
        (paths.map(|m| m.mount_path.clone()).collect(), root)
    }

    #[test]
    fn every_port_names_its_protocol_for_server_side_apply() {
        let p = pipeline(serde_json::json!({}));
        let v = version("v1", None);
        let d = Defaults::default();
        let named = |c: &Container| c.ports.iter().flatten().all(|port| port.protocol.as_deref() == Some("TCP"));
        assert!(named(container(&gateway_deployment(&p, &d))));
        assert!(named(container(&features_statefulset(&p, &d))));
        assert!(named(container(&version_deployment(&p, &v, Component::Ranking, &d))));
        for svc in [gateway_service(&p), features_service(&p), version_service(&p, "v1", Component::Retrieval)] {
            let ports = svc.spec.unwrap().ports.unwrap();
            assert!(ports.iter().all(|port| port.protocol.as_deref() == Some("TCP")), "{ports:?}");
        }
    }

    #[test]
    fn version_pods_download_their_pinned_artifacts_with_the_named_credentials() {
        let p = pipeline(serde_json::json!({"artifacts": {"credentialsSecret": "model-store"}}));
        let mut v = version("v1", None);
        v.spec.artifact_digest = Some(format!("sha256:{}", "a".repeat(64)));
        for component in [Component::Retrieval, Component::Ranking] {
            let d = version_deployment(&p, &v, component, &Defaults::default());
            let c = container(&d);
            let args = c.args.as_ref().unwrap();
            for arg in ["--model-uri=s3://models/v1", "--artifact-cache=/var/cache/reco/artifacts"] {
                assert!(args.contains(&arg.to_owned()), "{args:?}");
            }
            assert!(args.contains(&format!("--artifact-digest=sha256:{}", "a".repeat(64))), "{args:?}");
            let from = c.env_from.as_ref().unwrap()[0].secret_ref.as_ref().unwrap();
            assert_eq!((from.name.as_str(), from.optional), ("model-store", Some(false)));
        }
        // No digest, no Secret: neither flag nor envFrom; the other components never get the credentials.
        let plain = pipeline(serde_json::json!({}));
        let d = version_deployment(&plain, &version("v1", None), Component::Ranking, &Defaults::default());
        assert!(!container(&d).args.as_ref().unwrap().iter().any(|a| a.starts_with("--artifact-digest")));
        assert!(container(&d).env_from.is_none());
        assert!(container(&gateway_deployment(&p, &Defaults::default())).env_from.is_none());
        assert!(container(&features_statefulset(&p, &Defaults::default())).env_from.is_none());
    }

    #[test]
    fn each_service_can_write_exactly_where_it_writes() {
        let p = pipeline(serde_json::json!({}));
        let v = version("v1", None);
        let writable = |paths: &[&str]| (paths.iter().map(|p| p.to_string()).collect::<Vec<_>>(), Some(true));
        let tmp_and_data = writable(&["/tmp", "/var/lib/reco"]);
        let tmp_only = writable(&["/tmp"]);
        let retrieval = version_deployment(&p, &v, Component::Retrieval, &Defaults::default());
        let index_and_artifacts = writable(&["/tmp", "/var/cache/reco/artifacts", "/var/lib/reco"]);
        assert_eq!(
            writable_paths(&retrieval),
            index_and_artifacts,
            "the embedded vector index, the downloaded version"
        );
        assert!(container(&retrieval).args.as_ref().unwrap().contains(&"--data-dir=/var/lib/reco".to_owned()));
        assert_eq!(
            writable_paths(&features_statefulset(&p, &Defaults::default())),
            tmp_and_data,
            "snapshot and event log"
        );
        assert_eq!(writable_paths(&gateway_deployment(&p, &Defaults::default())), tmp_only);
        let tmp_and_artifacts = writable(&["/tmp", "/var/cache/reco/artifacts"]);
        let ranking = version_deployment(&p, &v, Component::Ranking, &Defaults::default());
        assert_eq!(writable_paths(&ranking), tmp_and_artifacts);
        let qdrant =
            pipeline(serde_json::json!({"retrieval": {"vectorStore": "Qdrant", "qdrantUrl": "http://q:6334"}}));
        let remote = version_deployment(&qdrant, &v, Component::Retrieval, &Defaults::default());
        assert_eq!(writable_paths(&remote), tmp_and_artifacts, "the index lives in the Qdrant server");
        assert!(!container(&remote).args.as_ref().unwrap().iter().any(|a| a.starts_with("--data-dir")));
        // Every volume a container mounts is declared once in its pod (or claimed by its StatefulSet).
        let features = features_statefulset(&p, &Defaults::default());
        let claims = features.spec.as_ref().unwrap().volume_claim_templates.iter().flatten();
        let claimed: Vec<String> = claims.filter_map(|c| c.metadata.name.clone()).collect();
        assert_eq!(claimed, ["data"]);
        for (d, claimed) in [
            (retrieval.template().clone(), &[][..]),
            (features.template().clone(), &claimed[..]),
            (gateway_deployment(&p, &Defaults::default()).template().clone(), &[]),
        ] {
            let mut declared: Vec<String> = pod(&d).volumes.iter().flatten().map(|v| v.name.clone()).collect();
            declared.extend(claimed.iter().cloned());
            let mounted: Vec<String> = container(&d).volume_mounts.iter().flatten().map(|m| m.name.clone()).collect();
            assert_eq!(declared, mounted);
            assert_eq!(pod(&d).security_context.as_ref().unwrap().fs_group, Some(SERVICES_GID));
        }
    }

    #[test]
    fn liveness_waits_for_a_startup_long_enough_to_index_a_large_catalogue() {
        let p = pipeline(serde_json::json!({"ranking": {"startupTimeoutSeconds": 95}}));
        let startup_window = |d: &PodTemplateSpec| {
            let probe = container(d).startup_probe.clone().expect("a startup probe");
            assert_eq!(probe.http_get.unwrap().path.as_deref(), Some("/healthz"));
            probe.period_seconds.unwrap() * probe.failure_threshold.unwrap()
        };
        let v = version("v1", None);
        assert_eq!(
            startup_window(version_deployment(&p, &v, Component::Retrieval, &Defaults::default()).template()),
            1800,
            "30 minutes"
        );
        assert_eq!(startup_window(features_statefulset(&p, &Defaults::default()).template()), 1800);
        assert_eq!(startup_window(gateway_deployment(&p, &Defaults::default()).template()), 300);
        assert_eq!(
            startup_window(version_deployment(&p, &v, Component::Ranking, &Defaults::default()).template()),
            100,
            "95 s, rounded up"
        );
        // Readiness is still gated on the service having loaded.
        let retrieval = version_deployment(&p, &v, Component::Retrieval, &Defaults::default());
        let readiness = container(&retrieval).readiness_probe.clone().unwrap().http_get.unwrap();
        assert_eq!(readiness.path.as_deref(), Some("/readyz"));
    }

    #[test]
    fn every_pod_is_annotated_for_prometheus_on_its_http_port() {
        let p = pipeline(serde_json::json!({}));
        let v = version("v1", None);
        let all = [
            gateway_deployment(&p, &Defaults::default()).template().clone(),
            features_statefulset(&p, &Defaults::default()).template().clone(),
            version_deployment(&p, &v, Component::Retrieval, &Defaults::default()).template().clone(),
            version_deployment(&p, &v, Component::Ranking, &Defaults::default()).template().clone(),
        ];
        for d in all {
            let template = d.metadata.clone().unwrap();
            let annotations = template.annotations.unwrap_or_default();
            assert_eq!(annotations.get("prometheus.io/scrape").map(String::as_str), Some("true"));
            assert_eq!(annotations.get("prometheus.io/path").map(String::as_str), Some("/metrics"));
            let port = &container(&d).ports.as_ref().unwrap()[0];
            assert_eq!(port.name.as_deref(), Some("http"));
            assert_eq!(annotations.get("prometheus.io/port"), Some(&port.container_port.to_string()));
        }
    }

    #[test]
    fn the_services_image_is_the_operators_unless_the_pipeline_names_one() {
        let p = pipeline(serde_json::json!({}));
        let defaults = Defaults { services_image: "mirror.example/reco:2.0.0".into() };
        let v = version("v1", None);
        for d in [
            gateway_deployment(&p, &defaults).template().clone(),
            features_statefulset(&p, &defaults).template().clone(),
            version_deployment(&p, &v, Component::Retrieval, &defaults).template().clone(),
        ] {
            assert_eq!(container(&d).image.as_deref(), Some("mirror.example/reco:2.0.0"));
        }
        assert_eq!(Defaults::default().services_image, format!("ghcr.io/reco-seed/reco:{}", env!("CARGO_PKG_VERSION")));
        let pinned = pipeline(serde_json::json!({"image": "registry.example/reco:1.2.3"}));
        assert_eq!(
            container(&gateway_deployment(&pinned, &defaults)).image.as_deref(),
            Some("registry.example/reco:1.2.3")
        );
        // Nothing of the default is written into the spec.
        assert_eq!(serde_json::to_value(&p.spec).unwrap().get("image"), None);
    }

    #[test]
    fn features_pods_seed_an_empty_store_with_the_artifacts_credentials() {
        let p = pipeline(serde_json::json!({
            "artifacts": {"credentialsSecret": "model-store"},
            "features": {"seed": {"uri": "s3://data/ml-100k", "holdoutFraction": 0.1}},
        }));
        let c = container(&features_statefulset(&p, &Defaults::default())).clone();
        let args = c.args.unwrap();
        for arg in ["--seed-from=s3://data/ml-100k", "--seed-holdout=0.1"] {
            assert!(args.contains(&arg.to_owned()), "{args:?}");
        }
        assert_eq!(c.env_from.unwrap()[0].secret_ref.as_ref().unwrap().name, "model-store");
        // Without a seed: no flags (and no credentials, as asserted above).
        let plain = pipeline(serde_json::json!({"artifacts": {"credentialsSecret": "model-store"}}));
        let args = container(&features_statefulset(&plain, &Defaults::default())).args.clone().unwrap();
        assert!(!args.iter().any(|a| a.starts_with("--seed")), "{args:?}");
    }

    #[test]
    fn features_keep_their_data_on_a_persistent_volume_per_pod() {
        let p = pipeline(serde_json::json!({}));
        let sts = features_statefulset(&p, &Defaults::default());
        assert_eq!(sts.metadata.name.as_deref(), Some("explore-features"));
        assert_eq!(sts.metadata.owner_references.as_ref().unwrap()[0].uid, "uid-1");
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(spec.service_name.as_deref(), Some("explore-features"));
        let selector = spec.selector.match_labels.as_ref().unwrap();
        let pod_labels = spec.template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
        assert_eq!(features_service(&p).spec.unwrap().selector.as_ref(), Some(selector));
        let claims = spec.volume_claim_templates.as_ref().unwrap();
        let claim = claims[0].spec.as_ref().unwrap();
        assert_eq!(claim.access_modes.as_deref(), Some(&["ReadWriteOnce".to_owned()][..]), "one writer per volume");
        assert_eq!(claim.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"], Quantity("10Gi".into()));
        assert_eq!(claim.storage_class_name, None, "the cluster's default class");
        let mount = container(&sts).volume_mounts.iter().flatten().find(|m| m.name == "data").unwrap();
        assert_eq!(mount.mount_path, "/var/lib/reco");
        assert!(container(&sts).args.as_ref().unwrap().contains(&"--data-dir=/var/lib/reco".to_owned()));
        assert!(pod(&sts).volumes.iter().flatten().all(|v| v.name != "data"), "no emptyDir shadows the claim");

        let sized =
            pipeline(serde_json::json!({"features": {"storage": {"size": "50Gi", "storageClassName": "fast"}}}));
        let sts = features_statefulset(&sized, &Defaults::default());
        let claim = sts.spec.unwrap().volume_claim_templates.unwrap().remove(0).spec.unwrap();
        assert_eq!(claim.resources.unwrap().requests.unwrap()["storage"], Quantity("50Gi".into()));
        assert_eq!(claim.storage_class_name.as_deref(), Some("fast"));

        // A long pipeline name still leaves room for the pods' controller-revision-hash label.
        let mut long = pipeline(serde_json::json!({}));
        long.metadata.name = Some("a".repeat(60));
        let name = features_statefulset(&long, &Defaults::default()).metadata.name.unwrap();
        assert!(name.len() <= MAX_STATEFULSET, "{name}");
    }

    #[test]
    fn version_pods_are_told_their_model() {
        let p = pipeline(serde_json::json!({"ranking": {"valueWeights": {"click": 1.0, "like": 0.5}}}));
        let args = container(&version_deployment(&p, &version("v7", None), Component::Ranking, &Defaults::default()))
            .args
            .clone()
            .unwrap();
        for expected in
            ["serve", "ranking", "--model-version=v7", "--model-uri=s3://models/v7", "--value-weights=click=1,like=0.5"]
        {
            assert!(args.iter().any(|a| a == expected), "{expected} missing from {args:?}");
        }
    }

    #[test]
    fn routing_configmap_carries_the_table_and_each_versions_services() {
        let p = pipeline(serde_json::json!({}));
        let table = RoutingTable {
            pipeline: "explore".into(),
            salt: "explore".into(),
            versions: vec![reco_contracts::RoutedVersion { name: "v1".into(), weight: 100 }],
            shadow: Some("v2".into()),
        };
        let data = routing_configmap(&p, &table, &["v1", "v2"]).data.unwrap();
        let parsed: RoutingTable = serde_saphyr::from_str(&data[ROUTING_FILE]).unwrap();
        assert_eq!(parsed, table);
        let endpoints: BTreeMap<String, BTreeMap<String, String>> =
            serde_saphyr::from_str(&data[ENDPOINTS_FILE]).unwrap();
        assert_eq!(endpoints["v2"]["ranking"], "http://explore-ranking-v2.reco.svc:50051");
    }
}
