//! Shared harness of the operator tests: the API test double with the reco
//! CRDs, the operator started in-process, and a scripted metric source.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

pub mod scenarios;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use prometheus_client::registry::Registry;
use reco_api::{ModelVersion, RecommenderPipeline, VersionPhase};
use reco_contracts::RoutingTable;
use reco_contracts::routing::{USER_GROUPS, groups_of_weight};
use reco_kube_testserver::TestApiServer;
use reco_metric_source::{MetricSource, SourceError, WindowQuery};
use reco_operator::controller::{self, WatchScope};
use reco_operator::resources::Defaults;
use reco_operator::sources::MetricSources;
use reco_operator::telemetry::OperatorMetrics;
use reco_rollout::{GroupCounts, SideMetrics, WindowMetrics};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const PATIENCE: Duration = Duration::from_secs(30);

/// The ServiceAccount of [`Scenario::operator_without_version_lists`] on a real cluster.
const RESTRICTED_OPERATOR: &str = "reco-operator-restricted";

/// The API server and what the tests read and script.
pub struct Scenario {
    /// The test double, or `None` on a real cluster.
    server: Option<TestApiServer>,
    pub client: Client,
    pub namespace: String,
    pub metrics: Arc<ScriptedMetrics>,
    pub routing_log: RoutingLog,
    pods: PodsReady,
}

impl Scenario {
    /// A scenario on the in-process API test double.
    pub async fn start() -> Self {
        let server = TestApiServer::start().await.expect("test API server starts");
        for crd in reco_operator::crds::crds() {
            server.register_custom_resource(&crd).expect("CRD registers");
        }
        let client = server.client();
        Self::with(Some(server), client, "reco".to_owned())
    }

    /// A scenario on the cluster of the current kubeconfig, in a new namespace.
    /// The reco CRDs must be installed (`kubectl apply --server-side -f crds/`).
    pub async fn real_cluster() -> Self {
        assert!(
            std::env::var_os("RECO_REAL_CLUSTER").is_some(),
            "set RECO_REAL_CLUSTER=1 (and KUBECONFIG) to run the real-cluster tests"
        );
        let client = Client::try_default().await.expect("a kubeconfig or in-cluster configuration");
        let namespace = format!("reco-test-{:08x}", rand::random::<u32>());
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let object: Namespace = serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap();
        namespaces.create(&PostParams::default(), &object).await.expect("namespace created");
        Self::with(None, client, namespace)
    }

    fn with(server: Option<TestApiServer>, client: Client, namespace: String) -> Self {
        let routing_log = RoutingLog::start(Api::namespaced(client.clone(), &namespace));
        let pods = PodsReady::start(Api::namespaced(client.clone(), &namespace));
        Self { server, client, namespace, metrics: Arc::new(ScriptedMetrics::default()), routing_log, pods }
    }

    /// Keeps the pods of Deployment `name` unready until [`Self::release_pods`].
    pub fn hold_pods(&self, name: &str) {
        self.pods.held.lock().unwrap().insert(name.to_owned());
    }

    pub fn release_pods(&self, name: &str) {
        self.pods.held.lock().unwrap().remove(name);
    }

    /// An operator client whose ModelVersion lists and watches fail until
    /// [`Self::allow_version_lists`]: on the test double through injected 500s,
    /// on a real API server through RBAC (a ServiceAccount of the test
    /// namespace that may do everything the operator does there but read
    /// ModelVersions). Also the scope it may watch.
    pub async fn operator_without_version_lists(&self) -> (Client, WatchScope) {
        let Some(server) = &self.server else { return self.restricted_operator().await };
        server.clear_requests();
        server.inject_failures("GET", "/modelversions", 500, 10_000);
        (self.client.clone(), WatchScope::default())
    }

    /// Lets the client of [`Self::operator_without_version_lists`] read ModelVersions.
    pub async fn allow_version_lists(&self) {
        match &self.server {
            Some(server) => server.clear_failures(),
            None => self.bind(RESTRICTED_OPERATOR, "reco-operator-versions").await,
        }
    }

    /// Waits until the restricted operator has tried, and failed, to list ModelVersions:
    /// three requests seen by the test double; a few seconds on a real server (which does not tell).
    pub async fn version_lists_failed(&self) {
        let Some(server) = &self.server else {
            tokio::time::sleep(Duration::from_secs(5)).await;
            return;
        };
        self.eventually("three failed ModelVersion lists", || async {
            let requests = server.requests();
            let lists = requests.iter().filter(|r| r.method == "GET" && r.path_and_query.contains("/modelversions"));
            (lists.count() >= 3).then_some(())
        })
        .await;
    }

    async fn restricted_operator(&self) -> (Client, WatchScope) {
        use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
        use k8s_openapi::api::rbac::v1::Role;
        let ns = &self.namespace;
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
        let account = serde_json::from_value(json!({"metadata": {"name": RESTRICTED_OPERATOR}})).unwrap();
        accounts.create(&PostParams::default(), &account).await.expect("ServiceAccount created");
        let roles: Api<Role> = Api::namespaced(self.client.clone(), ns);
        let all = json!(["get", "list", "watch", "create", "update", "patch", "delete"]);
        for (name, rules) in [
            (
                "reco-operator-core",
                json!([
                    {"apiGroups": [""], "resources": ["configmaps", "secrets", "services", "events"], "verbs": all},
                    {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets"], "verbs": all},
                    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": all},
                    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": all},
                    {"apiGroups": ["monitoring.coreos.com"], "resources": ["podmonitors"], "verbs": all},
                    {"apiGroups": ["reco.seed.dev"], "resources": ["recommenderpipelines", "recommenderpipelines/status"], "verbs": all},
                ]),
            ),
            (
                "reco-operator-versions",
                json!([{"apiGroups": ["reco.seed.dev"], "resources": ["modelversions", "modelversions/status"], "verbs": all}]),
            ),
        ] {
            let role = serde_json::from_value(json!({"metadata": {"name": name}, "rules": rules})).unwrap();
            roles.create(&PostParams::default(), &role).await.expect("Role created");
        }
        self.bind(RESTRICTED_OPERATOR, "reco-operator-core").await;
        // The token controller writes the ServiceAccount's token Secret.
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let token = self
            .eventually("the ServiceAccount's token", || async {
                let list = secrets.list(&Default::default()).await.ok()?;
                list.items.into_iter().find_map(|secret| {
                    let annotations = secret.metadata.annotations.unwrap_or_default();
                    let ours = annotations.get("kubernetes.io/service-account.name").map(String::as_str)
                        == Some(RESTRICTED_OPERATOR);
                    ours.then(|| secret.data?.remove("token")).flatten()
                })
            })
            .await;
        let mut config = kube::Config::infer().await.expect("a kubeconfig");
        config.auth_info = kube::config::AuthInfo {
            token: Some(String::from_utf8(token.0).expect("a UTF-8 token").into()),
            ..Default::default()
        };
        let client = Client::try_from(config).expect("a client for the ServiceAccount");
        (client, WatchScope { namespaces: vec![ns.clone()] })
    }

    async fn bind(&self, account: &str, role: &str) {
        use k8s_openapi::api::rbac::v1::RoleBinding;
        let bindings: Api<RoleBinding> = Api::namespaced(self.client.clone(), &self.namespace);
        let binding = serde_json::from_value(json!({
            "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": self.namespace}],
        }))
        .unwrap();
        bindings.create(&PostParams::default(), &binding).await.expect("RoleBinding created");
    }

    /// Deletes a real cluster's test namespace (the test double goes with the process).
    pub async fn cleanup(self) {
        if self.server.is_none() {
            let namespaces: Api<Namespace> = Api::all(self.client.clone());
            namespaces.delete(&self.namespace, &Default::default()).await.expect("namespace deleted");
        }
    }

    /// The test double, for fault injection; scenarios that need it do not run on real clusters.
    /// Whether the CRDs' schema and CEL rules are enforced at admission (a
    /// real API server does; the test double does not, like a cluster whose
    /// CRD predates a rule).
    pub fn enforces_schema(&self) -> bool {
        self.server.is_none()
    }

    pub fn server(&self) -> &TestApiServer {
        self.server.as_ref().expect("this scenario needs the API test double")
    }

    pub fn pipelines(&self) -> Api<RecommenderPipeline> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub fn versions(&self) -> Api<ModelVersion> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub async fn create_pipeline(&self, object: Value) -> RecommenderPipeline {
        let object: RecommenderPipeline = serde_json::from_value(object).expect("a pipeline");
        self.pipelines().create(&PostParams::default(), &object).await.expect("pipeline created")
    }

    pub async fn create_version(&self, object: Value) -> ModelVersion {
        let object: ModelVersion = serde_json::from_value(object).expect("a model version");
        self.versions().create(&PostParams::default(), &object).await.expect("version created")
    }

    pub async fn version(&self, name: &str) -> ModelVersion {
        self.versions().get(name).await.expect("version exists")
    }

    /// Polls until `check` gives a value, or fails the test after 30 s.
    pub async fn eventually<T, F, Fut>(&self, what: &str, check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        eventually(what, PATIENCE, check).await
    }

    pub async fn wait_for_phase(&self, version: &str, phase: VersionPhase) -> ModelVersion {
        self.eventually(&format!("{version} in phase {phase:?}"), || async {
            let v = self.versions().get(version).await.ok()?;
            (v.status.as_ref()?.phase? == phase).then_some(v)
        })
        .await
    }

    pub async fn wait_for_terminal(&self, version: &str) -> VersionPhase {
        self.eventually(&format!("{version} rollout ended"), || async {
            let phase = self.versions().get(version).await.ok()?.status?.phase?;
            matches!(phase, VersionPhase::RolledBack | VersionPhase::Failed).then_some(phase)
        })
        .await
    }

    /// The routing table in the pipeline's routing ConfigMap.
    pub async fn routing(&self, pipeline: &str) -> RoutingTable {
        let configmaps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let name = format!("{pipeline}-routing");
        let cm = self.eventually("routing ConfigMap", || async { configmaps.get(&name).await.ok() }).await;
        let yaml = cm.data.unwrap_or_default().remove("routing.yaml").expect("routing.yaml key");
        serde_saphyr::from_str(&yaml).expect("routing.yaml parses")
    }

    /// Number of Events (events.k8s.io/v1) with this reason in the namespace.
    pub async fn events_with_reason(&self, reason: &str) -> usize {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        let list = events.list(&Default::default()).await.expect("events list");
        list.items.iter().filter(|e| e.reason.as_deref() == Some(reason)).count()
    }
}

/// Polls `check` every 50 ms until it gives a value, or fails the test after `patience`.
pub async fn eventually<T, F, Fut>(what: &str, patience: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A pipeline whose steps take about a second each: shadow, canary 10%,
/// canary 50%; a version that leaves the routing keeps its objects for 1 s.
pub fn fast_pipeline(name: &str) -> Value {
    json!({
        "apiVersion": "reco.seed.dev/v1alpha1",
        "kind": "RecommenderPipeline",
        "metadata": {"name": name},
        "spec": {
            "rollout": {
                "steps": [
                    {"shadow": {"duration": "1s"}},
                    {"canary": {"weight": 10, "minImpressions": 2000, "maxDuration": "5m"}},
                    {"canary": {"weight": 50, "minImpressions": 2000, "maxDuration": "5m"}},
                ],
                "analysis": {"interval": "200ms"},
                "scaleDownDelay": "1s",
            },
        },
    })
}

pub fn model_version(pipeline: &str, name: &str) -> Value {
    json!({
        "apiVersion": "reco.seed.dev/v1alpha1",
        "kind": "ModelVersion",
        "metadata": {"name": name},
        "spec": {"pipeline": pipeline, "artifactUri": format!("file:///models/{name}"), "offlineMetrics": {"ndcg@10": 0.1}},
    })
}

/// The operator's controller running in this process.
pub struct Operator {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Operator {
    pub async fn start(s: &Scenario) -> Self {
        Self::start_as(s, s.client.clone(), WatchScope::default())
    }

    /// The operator with its own `client`, watching `scope`.
    pub fn start_as(s: &Scenario, client: Client, scope: WatchScope) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let sources = s.metrics.clone() as Arc<dyn MetricSources>;
        let metrics = Arc::new(OperatorMetrics::register(&mut Registry::default()));
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            controller::run(client, scope, Defaults::default(), "test", metrics, sources, shutdown).await;
        });
        Self { stop, task }
    }

    /// Stops the controller gracefully and waits for it.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(PATIENCE, self.task).await.expect("operator stops").expect("operator task");
    }
}

/// Metrics as if the pipeline served `RATE` impressions a second, split by
/// the canary's weight, each version at the CTR the test set.
#[derive(Default)]
pub struct ScriptedMetrics {
    ctr: Mutex<HashMap<String, f64>>,
    unavailable: Mutex<Option<String>>,
}

/// Impressions a second over all user groups: a 10% canary sees 40,000.
const RATE: f64 = 400_000.0;

impl ScriptedMetrics {
    pub fn set_ctr(&self, version: &str, ctr: f64) {
        self.ctr.lock().unwrap().insert(version.to_owned(), ctr);
    }

    /// Makes every look fail with `reason` (None: metrics come back).
    pub fn set_unavailable(&self, reason: Option<&str>) {
        *self.unavailable.lock().unwrap() = reason.map(str::to_owned);
    }
}

impl MetricSources for ScriptedMetrics {
    fn for_pipeline<'a>(&'a self, _p: &'a RecommenderPipeline) -> BoxFuture<'a, Result<Arc<dyn MetricSource>, String>> {
        Box::pin(async move {
            match self.unavailable.lock().unwrap().clone() {
                Some(reason) => Err(reason),
                None => {
                    // The weight of the step being judged: the routing the status last recorded.
                    let canary_weight = _p.status.as_ref().map_or(0, |status| status.canary_weight);
                    let ctr = self.ctr.lock().unwrap().clone();
                    Ok(Arc::new(ScriptedSource { ctr, canary_weight }) as Arc<dyn MetricSource>)
                }
            }
        })
    }
}

/// One look's worth of [`ScriptedMetrics`].
struct ScriptedSource {
    ctr: HashMap<String, f64>,
    canary_weight: u8,
}

impl ScriptedSource {
    /// `RATE` impressions a second spread evenly over all user groups (so the
    /// split matches the weight); a side owns the groups of its share, each
    /// clicking at the version's CTR plus or minus one binomial standard
    /// deviation, alternately, so that the CTR has a variance across groups
    /// that shrinks as the window grows.
    fn side(&self, version: &str, seconds: f64, groups: std::ops::Range<u64>, shadow: bool) -> SideMetrics {
        let ctr = self.ctr.get(version).copied().unwrap_or(0.05);
        let per_group = (seconds * RATE / USER_GROUPS as f64) as u64;
        let spread = (ctr * (1.0 - ctr) * per_group as f64).sqrt();
        let mut side = SideMetrics::default();
        for group in groups {
            let sign = if group % 2 == 0 { 1.0 } else { -1.0 };
            let clicks = (ctr * per_group as f64 + sign * spread).round().max(0.0) as u64;
            side.requests += per_group / 20;
            if !shadow && per_group > 0 {
                side.impressions += per_group;
                side.clicks += clicks;
                side.groups.insert(group as u16, GroupCounts { impressions: per_group, clicks });
            }
        }
        side.latency = vec![(0.025, side.requests)];
        side.latency_count = side.requests;
        side
    }
}

impl MetricSource for ScriptedSource {
    fn window<'a>(&'a self, q: &'a WindowQuery) -> BoxFuture<'a, Result<WindowMetrics, SourceError>> {
        Box::pin(async move {
            let seconds = q.now.duration_since(q.start).as_secs_f64().max(0.0);
            let split = groups_of_weight(self.canary_weight);
            let candidate = if q.candidate_is_shadow { 0..USER_GROUPS } else { 0..split };
            Ok(WindowMetrics {
                stable: self.side(&q.stable, seconds, split..USER_GROUPS, false),
                candidate: self.side(&q.candidate, seconds, candidate, q.candidate_is_shadow),
                before: Default::default(),
            })
        })
    }
}

/// Plays the kubelet and the Deployment controller for the operator's
/// Deployments, which neither the test double nor the test control plane
/// runs: every pod of every Deployment is ready as soon as it exists
/// (status written as their controller writes it), except those of the
/// Deployments held with [`Scenario::hold_pods`]. Real pods are the node
/// agent's tests (`tests/node`).
struct PodsReady {
    held: Arc<Mutex<BTreeSet<String>>>,
}

/// The field manager of the Deployment status [`PodsReady`] writes.
pub const PODS_READY_MANAGER: &str = "reco-test-pods";

impl PodsReady {
    fn start(deployments: Api<Deployment>) -> Self {
        let held = Arc::new(Mutex::new(BTreeSet::new()));
        let holding = held.clone();
        tokio::spawn(async move {
            loop {
                for d in deployments.list(&Default::default()).await.map(|l| l.items).unwrap_or_default() {
                    let name = d.metadata.name.clone().unwrap_or_default();
                    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                    let ready = if holding.lock().unwrap().contains(&name) { 0 } else { replicas };
                    let status = d.status.clone().unwrap_or_default();
                    if status.ready_replicas.unwrap_or(0) == ready
                        && status.observed_generation == d.metadata.generation
                    {
                        continue;
                    }
                    let patch = json!({"status": {
                        "observedGeneration": d.metadata.generation, "replicas": replicas, "updatedReplicas": replicas,
                        "readyReplicas": ready, "availableReplicas": ready,
                    }});
                    let params =
                        kube::api::PatchParams { field_manager: Some(PODS_READY_MANAGER.into()), ..Default::default() };
                    let _ = deployments.patch_status(&name, &params, &kube::api::Patch::Merge(patch)).await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self { held }
    }
}

/// Every distinct routing table the operator wrote, as gateways would have
/// seen them, recorded by watching the routing ConfigMaps.
#[derive(Clone, Default)]
pub struct RoutingLog(Arc<Mutex<Vec<RoutingTable>>>);

impl RoutingLog {
    fn start(configmaps: Api<ConfigMap>) -> Self {
        let log = Self::default();
        let recorded = log.clone();
        tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(configmaps, watcher::Config::default()).applied_objects());
            while let Some(Ok(cm)) = events.next().await {
                let Some(yaml) = cm.data.as_ref().and_then(|d| d.get("routing.yaml")) else { continue };
                let Ok(table) = serde_saphyr::from_str::<RoutingTable>(yaml) else { continue };
                let mut tables = recorded.0.lock().unwrap();
                if tables.last() != Some(&table) {
                    tables.push(table);
                }
            }
        });
        log
    }

    /// The weights `version` was served at while it shared traffic, in order, without repeats.
    pub fn canary_weights(&self, version: &str) -> Vec<u8> {
        let mut weights: Vec<u8> = Vec::new();
        for table in self.0.lock().unwrap().iter().filter(|t| t.versions.len() > 1) {
            if let Some(v) = table.versions.iter().find(|v| v.name == version)
                && weights.last() != Some(&v.weight)
            {
                weights.push(v.weight);
            }
        }
        weights
    }

    /// Whether `stable` had users in every table written since it became stable.
    pub fn always_serves(&self, stable: &str) -> bool {
        let tables = self.0.lock().unwrap();
        let since = tables.iter().position(|t| t.versions.iter().any(|v| v.name == stable));
        since.is_some()
            && tables[since.unwrap()..].iter().all(|t| t.versions.iter().any(|v| v.name == stable && v.weight > 0))
    }
}
