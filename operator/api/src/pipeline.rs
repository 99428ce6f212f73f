//! `RecommenderPipeline`: the services of one recommender and its rollout policy.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::status::RecommenderPipelineStatus;

/// A recommender: gateway, feature service, and per-model-version retrieval
/// and ranking, plus the policy that rolls new ModelVersions out through
/// shadow and canary steps on live click-through rate.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "reco.seed.dev",
    version = "v1alpha1",
    kind = "RecommenderPipeline",
    plural = "recommenderpipelines",
    shortname = "rp",
    category = "reco",
    namespaced,
    status = "RecommenderPipelineStatus",
    doc = "A recommender: its serving services and the policy that rolls model versions out on live CTR.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Stable", type_ = "string", json_path = ".status.stableVersion"),
    printcolumn(name = "Canary", type_ = "string", json_path = ".status.candidate.version"),
    printcolumn(name = "Weight", type_ = "integer", json_path = ".status.canaryWeight"),
    printcolumn(name = "Canary CTR", type_ = "number", json_path = ".status.lastAnalysis.canaryCtr"),
    printcolumn(name = "Stable CTR", type_ = "number", json_path = ".status.lastAnalysis.stableCtr"),
    printcolumn(name = "Verdict", type_ = "string", json_path = ".status.lastAnalysis.verdict"),
    printcolumn(name = "To Decide", type_ = "string", json_path = ".status.lastAnalysis.toDecide"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct RecommenderPipelineSpec {
    /// Freezes rollouts: no step advances, promotes or rolls back while true.
    /// Serving goes on with the current routing.
    #[serde(default)]
    pub paused: bool,
    /// Image of the reco services, used by every component that names none.
    /// Default: the operator's `--services-image`, the services release
    /// matching the operator, so that upgrading the operator moves every
    /// pipeline that sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.size() > 0 && !self.endsWith(':latest')").message("image must be set and pinned to a tag or digest other than latest"))]
    pub image: Option<String>,
    #[serde(default)]
    pub gateway: GatewaySpec,
    #[serde(default)]
    pub features: FeaturesSpec,
    #[serde(default)]
    pub retrieval: RetrievalSpec,
    #[serde(default)]
    pub ranking: RankingSpec,
    #[serde(default)]
    pub events: EventsSpec,
    #[serde(default)]
    pub diversity: DiversitySpec,
    #[serde(default)]
    pub artifacts: ArtifactsSpec,
    #[serde(default)]
    pub rollout: RolloutSpec,
}

/// How the retrieval and ranking pods reach the versions' artifacts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactsSpec {
    /// A Secret (same namespace) whose keys become the pods' environment:
    /// the object store's usual variables (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT`, `AWS_REGION`,
    /// `GOOGLE_SERVICE_ACCOUNT_KEY`, `AZURE_STORAGE_ACCOUNT_NAME`, ...).
    /// Without it the pods use what their environment gives (workload
    /// identity, instance roles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: Option<String>,
}

/// Settings shared by every deployed component.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ComponentSpec {
    /// Number of pods. Defaults to 2 for the gateway and 1 elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// Image override for this component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPU and memory requests and limits. Defaults are set per component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// How long a pod may take to start answering, in seconds, before it is
    /// restarted; liveness is checked only after. Loading and indexing a
    /// large catalogue takes minutes. Default 1800 (300 for the gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 86400))]
    pub startup_timeout_seconds: Option<u32>,
}

/// The gateway: the HTTP/JSON entry point of clients.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    #[serde(flatten)]
    pub component: ComponentSpec,
    /// Time budget of one recommend call, in milliseconds. Stages that run
    /// late are replaced by popular and fresh items.
    #[serde(default = "default_deadline_ms")]
    #[schemars(range(min = 1, max = 10000))]
    pub deadline_ms: u32,
    /// How long a user's recommendations stay cached, in seconds (0 disables).
    #[serde(default = "default_cache_ttl")]
    #[schemars(range(max = 86400))]
    pub cache_ttl_seconds: u32,
    /// Salt of the hash that assigns users to model versions. Changing it
    /// reshuffles which users see the canary. Defaults to the pipeline name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_salt: Option<String>,
    /// Secret whose `token-key` entry signs recommendation tokens. Every
    /// gateway replica must share the key, or an event carrying a token from
    /// another replica is refused. Default: `<pipeline>-token`, which the
    /// operator creates with a random key when it is missing and never
    /// changes afterwards (rotate it by editing the Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub token_key_secret: Option<String>,
    /// Redis the gateway replicas share to count each click once (a click
    /// replayed on another replica is then a duplicate too), e.g.
    /// `redis://redis.reco.svc:6379`. Default: the feature store's Redis
    /// when `features.backend` is `Redis`; without either, each replica
    /// remembers only the clicks it accepted itself (exact with one replica).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_redis_url: Option<String>,
}

impl Default for GatewaySpec {
    fn default() -> Self {
        Self {
            component: ComponentSpec::default(),
            deadline_ms: default_deadline_ms(),
            cache_ttl_seconds: default_cache_ttl(),
            routing_salt: None,
            token_key_secret: None,
            dedup_redis_url: None,
        }
    }
}

fn default_deadline_ms() -> u32 {
    100
}
fn default_cache_ttl() -> u32 {
    30
}

/// Where online user and item features live.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FeatureBackend {
    /// In the feature service's memory, snapshotted to its volume.
    #[default]
    Embedded,
    /// A Redis server named by `redisUrl`.
    Redis,
}

/// The online feature service, which also ingests events. It runs as a
/// StatefulSet: each pod writes its snapshot and event log to a volume of
/// its own.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.backend != 'Redis' || has(self.redisUrl)").message("redisUrl is required when backend is Redis"))]
#[x_kube(validation = Rule::new("self.backend != 'Embedded' || !has(self.replicas) || self.replicas <= 1").message("replicas must be at most 1 with the Embedded backend, which keeps each user's features in one pod; use backend Redis to scale out"))]
pub struct FeaturesSpec {
    #[serde(flatten)]
    pub component: ComponentSpec,
    #[serde(default)]
    pub backend: FeatureBackend,
    /// Redis address, e.g. `redis://redis.reco.svc:6379`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    #[serde(default)]
    pub storage: FeaturesStorage,
    /// A history to load into an empty store when the features pods first
    /// start (a store that holds users is never seeded again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<FeaturesSeed>,
}

/// Users and their interactions to start the online features from: a data
/// set in the trainer's input format (the files `reco train --data` reads),
/// uploaded with its `manifest.json` as a model version is. Credentials come
/// from `spec.artifacts.credentialsSecret`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FeaturesSeed {
    /// Where the data set is: `s3://bucket/prefix`, `gs://...`, `az://...`,
    /// `https://...` or `file:///path` (inside the pods).
    #[schemars(regex(pattern = r"^(file|s3|gs|az|http|https)://.+"))]
    pub uri: String,
    /// Leave out this fraction of each user's latest interactions (0 to
    /// 0.5): a replay or an evaluation can then treat them as the users'
    /// future.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 0.5))]
    pub holdout_fraction: f64,
}

/// The persistent volume of each features pod, for its snapshot and event
/// log (the training data). Fixed at creation, like a StatefulSet's volume
/// claims; the volumes outlive the pipeline (delete the PersistentVolumeClaims
/// `data-<pipeline>-features-<n>` to free them).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("storage cannot change once created: a StatefulSet's volume claims are fixed"))]
pub struct FeaturesStorage {
    /// Size of each volume, a Kubernetes quantity such as `10Gi`.
    #[serde(default = "default_storage_size")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub size: String,
    /// StorageClass of the volumes. Default: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

impl Default for FeaturesStorage {
    fn default() -> Self {
        Self { size: default_storage_size(), storage_class_name: None }
    }
}

fn default_storage_size() -> String {
    "10Gi".to_owned()
}

/// Where item embeddings are searched.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VectorStore {
    /// The Qdrant engine inside each retrieval pod.
    #[default]
    Embedded,
    /// A Qdrant server named by `qdrantUrl`, one collection per model version.
    Qdrant,
}

/// Retrieval: the user tower and approximate nearest-neighbour search, one
/// Deployment per serving model version.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.vectorStore != 'Qdrant' || has(self.qdrantUrl)").message("qdrantUrl is required when vectorStore is Qdrant"))]
pub struct RetrievalSpec {
    #[serde(flatten)]
    pub component: ComponentSpec,
    /// Candidates retrieved per request before ranking.
    #[serde(default = "default_candidates")]
    #[schemars(range(min = 10, max = 10000))]
    pub candidates: u32,
    #[serde(default)]
    pub vector_store: VectorStore,
    /// Qdrant server address, e.g. `http://qdrant.reco.svc:6334`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qdrant_url: Option<String>,
}

impl Default for RetrievalSpec {
    fn default() -> Self {
        Self {
            component: ComponentSpec::default(),
            candidates: default_candidates(),
            vector_store: VectorStore::default(),
            qdrant_url: None,
        }
    }
}

fn default_candidates() -> u32 {
    500
}

/// Ranking: scores candidates with the version's ranking model, one
/// Deployment per serving model version.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RankingSpec {
    #[serde(flatten)]
    pub component: ComponentSpec,
    /// Candidates scored per model call.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 4096))]
    pub batch_size: u32,
    /// Weights of the multi-task heads in the value model, e.g. `{click: 1.0, like: 0.5}`.
    #[serde(default = "default_value_weights")]
    pub value_weights: BTreeMap<String, f64>,
}

impl Default for RankingSpec {
    fn default() -> Self {
        Self {
            component: ComponentSpec::default(),
            batch_size: default_batch_size(),
            value_weights: default_value_weights(),
        }
    }
}

fn default_batch_size() -> u32 {
    256
}
fn default_value_weights() -> BTreeMap<String, f64> {
    BTreeMap::from([("click".to_owned(), 1.0)])
}

/// Where accepted events are appended for training.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EventSink {
    /// An append-only log on the feature service's volume.
    #[default]
    Embedded,
    /// A Kafka topic.
    Kafka,
}

/// Event ingestion (clicks, likes, dwell, hides).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.sink != 'Kafka' || (has(self.kafkaBrokers) && has(self.kafkaTopic))").message("kafkaBrokers and kafkaTopic are required when sink is Kafka"))]
pub struct EventsSpec {
    #[serde(default)]
    pub sink: EventSink,
    /// Kafka bootstrap servers, comma separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_brokers: Option<String>,
    /// Kafka topic of the training log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_topic: Option<String>,
}

/// Final reranking for diversity and business rules.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DiversitySpec {
    /// MMR trade-off in [0, 1]: 1 ranks by relevance only, 0 by novelty only.
    #[serde(default = "default_mmr_lambda")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub mmr_lambda: f64,
    /// At most this many items of one category per page (0: no limit).
    #[serde(default = "default_max_per_category")]
    #[schemars(range(max = 100))]
    pub max_per_category: u32,
    /// Score boost in [0, 1] for items published recently.
    #[serde(default = "default_freshness_boost")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub freshness_boost: f64,
}

impl Default for DiversitySpec {
    fn default() -> Self {
        Self {
            mmr_lambda: default_mmr_lambda(),
            max_per_category: default_max_per_category(),
            freshness_boost: default_freshness_boost(),
        }
    }
}

fn default_mmr_lambda() -> f64 {
    0.7
}
fn default_max_per_category() -> u32 {
    3
}
fn default_freshness_boost() -> f64 {
    0.1
}

/// How each new ModelVersion is rolled out: ordered steps, the analysis
/// that judges them, and an optional offline gate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.steps.filter(s, has(s.canary)).map(s, s.canary.weight).isSorted() && self.steps.filter(s, has(s.canary)).all(s, self.steps.filter(t, has(t.canary) && t.canary.weight == s.canary.weight).size() == 1)").message("canary weights must be strictly increasing"))]
pub struct RolloutSpec {
    /// Steps in order, shadow steps first. A version is promoted to stable
    /// after the last one passes. Default: shadow 10m, then canary at 10%
    /// (20,000 impressions, at most 4h), 25% (50,000, 2h) and 50% (100,000, 2h).
    /// Canary steps need enough traffic to decide before `maxDuration`: at
    /// low traffic, lengthen it or lower `minImpressions`.
    #[serde(default = "default_steps")]
    #[schemars(length(min = 1, max = 10))]
    pub steps: Vec<RolloutStepSpec>,
    #[serde(default)]
    pub analysis: AnalysisSpec,
    /// Offline check against stable before any live traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_gate: Option<OfflineGateSpec>,
    /// How long a version that left the routing (retired, rolled back,
    /// failed or deleted) keeps its Services and Deployments before they are
    /// deleted: gateways route by the routing ConfigMap they last read, and
    /// the kubelet takes a minute or more to update a mounted ConfigMap.
    /// `0s` deletes them at once. Default `2m`.
    #[serde(default = "default_scale_down_delay")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"))]
    pub scale_down_delay: String,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self {
            steps: default_steps(),
            analysis: AnalysisSpec::default(),
            offline_gate: None,
            scale_down_delay: default_scale_down_delay(),
        }
    }
}

fn default_scale_down_delay() -> String {
    "2m".to_owned()
}

/// The steps of `RolloutPolicy::recommended()`, whose error rates were
/// checked by simulation (see the analysis docs): they hold from about
/// 20,000 impressions a minute at 2% CTR and 10,000 a minute at 5% or more.
fn default_steps() -> Vec<RolloutStepSpec> {
    let canary = |weight, min_impressions, max_duration: &str| RolloutStepSpec {
        shadow: None,
        canary: Some(CanaryStepSpec { weight, min_impressions, max_duration: max_duration.to_owned() }),
    };
    vec![
        RolloutStepSpec { shadow: Some(ShadowStepSpec { duration: "10m".to_owned() }), canary: None },
        canary(10, 20_000, "4h"),
        canary(25, 50_000, "2h"),
        canary(50, 100_000, "2h"),
    ]
}

/// One rollout step: exactly one of `shadow` or `canary`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.shadow) != has(self.canary)").message("a step is exactly one of shadow or canary"))]
pub struct RolloutStepSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowStepSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStepSpec>,
}

/// Mirror every request to the new version without serving its answers.
/// Only the latency and error-rate guardrails are analysed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ShadowStepSpec {
    /// How long to mirror, as a duration like `5m` or `1h30m`.
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"))]
    pub duration: String,
}

/// Serve a share of users from the new version and compare its CTR with stable's.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStepSpec {
    /// Percentage of users served by the new version, 1 to 100.
    #[schemars(range(min = 1, max = 100))]
    pub weight: u8,
    /// The step cannot pass before the canary has shown this many items.
    #[x_kube(validation = Rule::new("self > 0").message("minImpressions must be above zero"))]
    pub min_impressions: u64,
    /// When the analysis is still undecided after this long, `analysis.onTimeout` applies.
    #[serde(default = "default_max_duration")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"))]
    pub max_duration: String,
}

fn default_max_duration() -> String {
    "30m".to_owned()
}

/// Where the analysis reads live metrics.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MetricSourceKind {
    /// Scrape each gateway pod's `/metrics` directly (no Prometheus needed).
    #[default]
    Scrape,
    /// PromQL instant queries against `prometheusUrl`.
    Prometheus,
}

/// What happens when a canary step's `maxDuration` runs out undecided.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TimeoutAction {
    /// Roll the new version back.
    #[default]
    Rollback,
    /// Treat the step as passed and go on.
    Proceed,
}

/// How live metrics are judged at each step.
///
/// The CTR test is sequential: the operator looks at the metrics every
/// `interval` and the stated error rates hold however often it looks. A step
/// passes when the canary's CTR is shown, at `confidence`, to be at least
/// `(1 - ctrMargin)` times stable's over the same window; it fails when the
/// canary is shown to be worse. Its variance is measured across user groups
/// (users, not impressions, are independent), reduced by what the same users
/// did before the rollout (CUPED, `preRolloutWindow`). Guardrails compare the
/// candidate's error rate and slow requests with stable's over the same
/// window, each a sequential test; a canary that does not get the share of
/// traffic its weight promises holds the rollout (`SampleRatioMismatch`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.source != 'Prometheus' || has(self.prometheusUrl)").message("prometheusUrl is required when source is Prometheus"))]
pub struct AnalysisSpec {
    #[serde(default)]
    pub source: MetricSourceKind,
    /// Prometheus base URL, e.g. `http://prometheus.monitoring.svc:9090`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_url: Option<String>,
    /// The `job` label of the scrape job that reads this pipeline's gateways
    /// in Prometheus. Default: the gateway Service's name, which is the job
    /// of a ServiceMonitor selecting it. Queries are always scoped to the
    /// pipeline's namespace too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_job: Option<String>,
    /// How far before the canary's start users' clicks are read, per user
    /// group, to take out of the CTR's noise what the users did anyway
    /// (CUPED). `0s` turns it off. Default `24h`.
    #[serde(default = "default_pre_rollout_window")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"))]
    pub pre_rollout_window: String,
    /// How often metrics are read, as a duration like `30s`.
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"))]
    pub interval: String,
    /// Relative non-inferiority margin, strictly between 0 and 1: 0.05 accepts a
    /// canary whose CTR is at least 95% of stable's.
    #[serde(default = "default_ctr_margin")]
    #[x_kube(validation = Rule::new("self > 0.0 && self < 1.0").message("ctrMargin must be strictly between 0 and 1"))]
    pub ctr_margin: f64,
    /// Confidence of each decision, strictly between 0 and 1 (e.g. 0.95 keeps
    /// false rollbacks of an equal model under 5%).
    #[serde(default = "default_confidence")]
    #[x_kube(validation = Rule::new("self > 0.0 && self < 1.0").message("confidence must be strictly between 0 and 1"))]
    pub confidence: f64,
    /// Guardrail: the candidate fails when its p99 latency is shown to exceed
    /// this many milliseconds where stable's does not (its share of requests
    /// over it exceeds stable's by more than one percentage point; judged
    /// from 100 requests). Default 500.
    #[serde(default = "default_max_p99_latency_ms", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 60000))]
    pub max_p99_latency_ms: Option<u32>,
    /// Guardrail: the candidate fails when its error rate is shown to exceed
    /// stable's over the same window by more than this fraction (0.01: one
    /// percentage point). A shared outage raises both and fails neither.
    #[serde(default = "default_max_error_rate")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_error_rate: f64,
    #[serde(default)]
    pub on_timeout: TimeoutAction,
}

impl Default for AnalysisSpec {
    fn default() -> Self {
        Self {
            source: MetricSourceKind::default(),
            prometheus_url: None,
            prometheus_job: None,
            pre_rollout_window: default_pre_rollout_window(),
            interval: default_interval(),
            ctr_margin: default_ctr_margin(),
            confidence: default_confidence(),
            max_p99_latency_ms: Some(500),
            max_error_rate: default_max_error_rate(),
            on_timeout: TimeoutAction::default(),
        }
    }
}

fn default_pre_rollout_window() -> String {
    "24h".to_owned()
}

fn default_interval() -> String {
    "30s".to_owned()
}
fn default_ctr_margin() -> f64 {
    0.05
}
fn default_confidence() -> f64 {
    0.95
}
fn default_max_p99_latency_ms() -> Option<u32> {
    Some(500)
}
fn default_max_error_rate() -> f64 {
    0.01
}

/// A new version must not be worse than stable offline before it sees traffic.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OfflineGateSpec {
    /// Name of a metric in the versions' `offlineMetrics`, e.g. `ndcg@10`.
    #[schemars(length(min = 1, max = 63))]
    pub metric: String,
    /// Allowed relative regression against stable, in [0, 1).
    #[serde(default)]
    #[x_kube(validation = Rule::new("self >= 0.0 && self < 1.0").message("maxRegression must be in [0, 1)"))]
    pub max_regression: f64,
}
