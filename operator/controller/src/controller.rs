//! The RecommenderPipeline controller: a thin loop around the pure parts.
//! Each reconcile reads the pipeline and its ModelVersions, looks at live
//! metrics when the analysis interval is due, asks the rollout engine for
//! the next state, applies the objects with server-side apply, and writes
//! the statuses that [`crate::status`] derives and Events. It never writes
//! a spec; status writes carry the object's resourceVersion, so a write
//! based on a stale read fails and is retried.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::{Api, DeleteParams, PartialObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use reco_api::{FIELD_MANAGER, ModelVersion, PIPELINE_LABEL, RecommenderPipeline, RecommenderPipelineStatus};
use reco_metric_source::WindowQuery;
use reco_rollout::analysis::metrics_unavailable;
use reco_rollout::engine::{HistoryEntry, Observation, RolloutState};
use reco_rollout::{AnalysisReport, Decision, RolloutPolicy, VersionInfo, VersionPhase, decide};
use serde::Serialize;
use serde_json::json;
use tracing::{info, warn};

use crate::observed;
use crate::policy::{InvalidSpec, analysis_interval, rollout_policy, scale_down_delay};
use crate::resources::{self, Component};
use crate::sources::MetricSources;
use crate::status::{self, Look, Observed};
use crate::telemetry::OperatorMetrics;
use crate::validation;

const CONTROLLER: &str = "recommenderpipeline";
/// How long to wait before looking at an invalid spec again; a fix to the
/// spec triggers a reconcile at once anyway.
const INVALID_SPEC_RECHECK: Duration = Duration::from_secs(300);

/// Errors of one reconcile; all are retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0} has no namespace")]
    NoNamespace(String),
}

impl Error {
    /// Label of `reco_operator_reconcile_errors_total`.
    fn kind(&self) -> &'static str {
        match self {
            Self::Kube(kube::Error::Api(status)) if status.code == 409 => "conflict",
            Self::Kube(_) => "api",
            Self::NoNamespace(_) => "invalid_object",
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<OperatorMetrics>,
    pub versions: Store<ModelVersion>,
    /// Owned Deployments (labels and status only), to find failing versions and retired objects.
    pub deployments: Store<Deployment>,
    /// Owned Services (metadata only), to find retired objects.
    pub services: Store<PartialObjectMeta<Service>>,
    /// Owned StatefulSets (metadata only), to skip applies that would change nothing.
    pub statefulsets: Store<PartialObjectMeta<StatefulSet>>,
    /// Owned ConfigMaps (metadata only), to skip applies that would change nothing.
    pub configmaps: Store<PartialObjectMeta<ConfigMap>>,
    /// What was last applied: skips the API call while nobody changed the object.
    applied: AppliedCache,
    pub sources: Arc<dyn MetricSources>,
    /// What the operator's flags set for pipelines that do not.
    defaults: resources::Defaults,
    /// Consecutive failures per pipeline, for exponential backoff.
    failures: Mutex<HashMap<ObjectRef<RecommenderPipeline>, u32>>,
    /// When each token Secret (`namespace/name/pipeline uid`) was last seen to exist: it is asked for again
    /// only after `TOKEN_SECRET_RECHECK`.
    token_secrets: Mutex<HashMap<String, Instant>>,
}

/// Where the controller watches.
#[derive(Clone, Debug, Default)]
pub struct WatchScope {
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    scope: WatchScope,
    defaults: resources::Defaults,
    identity: &str,
    metrics: Arc<OperatorMetrics>,
    sources: Arc<dyn MetricSources>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let namespaces: Vec<Option<&str>> = if scope.namespaces.is_empty() {
        vec![None]
    } else {
        scope.namespaces.iter().map(|n| Some(n.as_str())).collect()
    };
    // Every watch keeps only what reconciles read: no managedFields, and
    // Deployments without their pod template. Services, StatefulSets and
    // ConfigMaps are watched as metadata, only to notice drift and deletion.
    let (versions, writer) = reflector::store();
    let version_events = watch_all(
        &namespaces,
        |ns| scoped_api(&client, ns),
        watcher::Config::default(),
        |v: &mut ModelVersion| strip_managed_fields(v),
    )
    .reflect(writer)
    // Deleted versions too: their pods must go at once.
    .touched_objects();
    let (pipeline_reader, pipeline_writer) = reflector::store();
    let pipelines = watch_all(
        &namespaces,
        |ns| scoped_api(&client, ns),
        watcher::Config::default(),
        |p: &mut RecommenderPipeline| strip_managed_fields(p),
    )
    .reflect(pipeline_writer)
    .applied_objects()
    // Status writes do not bump the generation: only spec changes reconcile.
    .predicate_filter(predicates::generation, Default::default());
    let owned = watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={FIELD_MANAGER}"));
    let (deployments, deployment_writer) = reflector::store();
    let deployment_events = watch_all(
        &namespaces,
        |ns| scoped_api(&client, ns),
        owned.clone(),
        |d: &mut Deployment| {
            strip_managed_fields(d);
            d.spec = None;
        },
    )
    .reflect(deployment_writer)
    .applied_objects();
    let (services, service_writer) = reflector::store();
    // `Api<PartialObjectMeta<_>>` makes metadata-only requests.
    let service_events = watch_all(
        &namespaces,
        |ns| scoped_api::<PartialObjectMeta<Service>>(&client, ns),
        owned.clone(),
        strip_managed_fields,
    )
    .reflect(service_writer)
    .applied_objects();
    let (statefulsets, statefulset_writer) = reflector::store();
    let statefulset_events = watch_all(
        &namespaces,
        |ns| scoped_api::<PartialObjectMeta<StatefulSet>>(&client, ns),
        owned.clone(),
        strip_managed_fields,
    )
    .reflect(statefulset_writer)
    .applied_objects();
    let (configmaps, configmap_writer) = reflector::store();
    let configmap_events = watch_all(
        &namespaces,
        |ns| scoped_api::<PartialObjectMeta<ConfigMap>>(&client, ns),
        owned,
        strip_managed_fields,
    )
    .reflect(configmap_writer)
    .applied_objects();

    let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: Some(identity.into()) };
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        metrics,
        versions,
        deployments,
        services,
        statefulsets,
        configmaps,
        applied: AppliedCache::default(),
        sources,
        defaults,
        failures: Mutex::default(),
        token_secrets: Mutex::default(),
    });

    Controller::for_stream(pipelines, pipeline_reader)
        .with_config(ControllerConfig::default().concurrency(MAX_CONCURRENT_RECONCILES).debounce(DEBOUNCE))
        .owns_stream(deployment_events)
        .owns_stream(service_events)
        .owns_stream(statefulset_events)
        .owns_stream(configmap_events)
        .watches_stream(version_events, |v: ModelVersion| {
            v.namespace().map(|ns| ObjectRef::new(&v.spec.pipeline).within(&ns))
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "reconcile failed");
            }
        })
        .await;
}

/// At most this many pipelines reconcile at once, so a burst (an operator
/// start with a thousand pipelines) queues here instead of at the API server.
const MAX_CONCURRENT_RECONCILES: u16 = 16;
/// Events closer than this coalesce into one reconcile: applying a
/// pipeline's objects sends a burst of watch events back.
const DEBOUNCE: Duration = Duration::from_millis(100);

fn scoped_api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        None => Api::all(client.clone()),
        Some(ns) => Api::namespaced(client.clone(), ns),
    }
}

/// One watch per namespace (one in all), merged, each object trimmed by `trim`.
fn watch_all<K, F>(
    namespaces: &[Option<&str>],
    api: impl Fn(Option<&str>) -> Api<K>,
    config: watcher::Config,
    trim: F,
) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    F: Fn(&mut K) + Clone + Send + 'static,
{
    futures::stream::select_all(
        namespaces.iter().map(|ns| watcher(api(*ns), config.clone()).default_backoff().modify(trim.clone()).boxed()),
    )
}

fn strip_managed_fields<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

async fn reconcile(p: Arc<RecommenderPipeline>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_pipeline(&p, &ctx).await;
    ctx.metrics.reconciled(CONTROLLER, started.elapsed(), result.as_ref().err().map(Error::kind));
    if result.is_ok() {
        ctx.failures.lock().expect("failure counts lock").remove(&ObjectRef::from(p.as_ref()));
    }
    result
}

/// Exponential backoff with jitter, 1 s doubling to 5 min, per pipeline.
fn error_policy(p: Arc<RecommenderPipeline>, error: &Error, ctx: Arc<Context>) -> Action {
    let attempts = {
        let mut failures = ctx.failures.lock().expect("failure counts lock");
        let count = failures.entry(ObjectRef::from(p.as_ref())).or_default();
        *count = count.saturating_add(1);
        *count
    };
    let delay = backoff_delay(attempts, rand::random::<f64>());
    warn!(pipeline = %p.name_any(), %error, attempts, delay_ms = delay.as_millis() as u64, "retrying");
    Action::requeue(delay)
}

/// `min(300 s, 2^(attempts-1) s)`, scaled by a jitter factor in [0.5, 1.0).
pub fn backoff_delay(attempts: u32, jitter: f64) -> Duration {
    let base = Duration::from_secs(1u64 << attempts.saturating_sub(1).min(9)).min(Duration::from_secs(300));
    base.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
}

async fn reconcile_pipeline(p: &RecommenderPipeline, ctx: &Context) -> Result<Action, Error> {
    if !caches_filled(ctx) {
        return Ok(Action::requeue(CACHE_WAIT));
    }
    let namespace = p.namespace().ok_or_else(|| Error::NoNamespace(p.name_any()))?;
    let name = p.name_any();
    let now = Timestamp::now();
    let previous = p.status.clone().unwrap_or_default();

    let valid = validation::check_pipeline(p)
        .and_then(|()| rollout_policy(&p.spec))
        .and_then(|policy| Ok((policy, analysis_interval(&p.spec)?, scale_down_delay(&p.spec)?)));
    let (policy, interval, drain_delay) = match valid {
        Ok(valid) => valid,
        Err(invalid) => return report_invalid_spec(p, ctx, previous, &invalid, now).await,
    };

    let mut versions: Vec<Arc<ModelVersion>> = ctx
        .versions
        .state()
        .into_iter()
        .filter(|v| v.namespace().as_deref() == Some(namespace.as_str()) && v.spec.pipeline == name)
        .collect();
    versions.sort_by_key(|v| v.name_any());

    let owned = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        meta.namespace.as_deref() == Some(namespace.as_str())
            && meta.labels.as_ref().and_then(|l| l.get(PIPELINE_LABEL)) == Some(&name)
    };
    let deployments: Vec<Arc<Deployment>> =
        ctx.deployments.state().into_iter().filter(|d| owned(&d.metadata)).collect();
    let services: Vec<Arc<PartialObjectMeta<Service>>> =
        ctx.services.state().into_iter().filter(|s| owned(&s.metadata)).collect();
    let infos: Vec<VersionInfo> = versions.iter().map(|v| observed::version_info(v, &deployments)).collect();

    let state = status::engine_state(&previous, &versions);
    let last_look = previous.last_analysis.as_ref().and_then(|analysis| analysis.time.as_ref()).map(|time| time.0);
    let look = match status::analysis_due(&state, last_look, interval, now) {
        true => look_at_metrics(p, ctx, &policy, &state, now).await.map(|report| Look { report, time: now }),
        false => None,
    };
    if let Some(look) = &look {
        ctx.metrics.analysed(&namespace, &name, look.report.verdict);
    }

    let salt = p.spec.gateway.routing_salt.clone().unwrap_or_else(|| name.clone());
    let decision = decide(
        &policy,
        &state,
        &Observation {
            pipeline: &name,
            salt: &salt,
            versions: &infos,
            analysis: look.as_ref().map(|look| &look.report),
            paused: p.spec.paused,
            now,
        },
    );

    let serving = observed::serving_versions(&decision);
    apply_objects(p, ctx, &namespace, &decision, &versions, &serving).await?;
    let draining = observed::draining_versions(&decision.state.history, &serving, drain_delay, now);
    let keep: BTreeSet<String> = serving.iter().chain(draining.keys()).cloned().collect();
    delete_retired_objects(ctx, &namespace, &deployments, &services, &keep).await?;

    for transition in &decision.transitions {
        announce(p, ctx, &versions, transition).await;
    }
    let observed = Observed {
        status: &previous,
        generation: p.metadata.generation,
        policy: &policy,
        paused: p.spec.paused,
        versions: &infos,
    };
    let status = status::pipeline_status(observed, &decision, look.as_ref(), now);
    for version in &versions {
        if let Some(desired) = status::version_status(version, &decision, status.last_analysis.as_ref(), now) {
            write_status(ctx, version.as_ref(), version.status.as_ref(), &desired).await?;
        }
    }
    ctx.metrics.pipeline_state(&namespace, &name, status.phase, status.canary_weight);
    write_status(ctx, p, p.status.as_ref(), &status).await?;

    if decision.state.candidate.is_none() {
        ctx.sources.release(p);
    }
    let mut requeue =
        if decision.state.candidate.is_some() { decision.requeue_after.min(interval) } else { decision.requeue_after };
    if let Some(drained) = observed::next_drain(&draining, now) {
        requeue = requeue.min(drained);
    }
    Ok(Action::requeue(requeue))
}

/// How soon to look again while a watch cache is still empty.
const CACHE_WAIT: Duration = Duration::from_secs(1);

/// Whether every watch cache has been filled by its first list. Deciding
/// before would take a ModelVersion not yet listed for a deleted one (its
/// rollout dropped, a finished version started again) and a Deployment not
/// yet listed for a healthy one; after an operator restart or a leader
/// change the pipelines are often listed first.
fn caches_filled(ctx: &Context) -> bool {
    let filled =
        |wait: Option<Result<(), kube::runtime::reflector::store::WriterDropped>>| matches!(wait, Some(Ok(())));
    filled(ctx.versions.wait_until_ready().now_or_never())
        && filled(ctx.deployments.wait_until_ready().now_or_never())
        && filled(ctx.services.wait_until_ready().now_or_never())
        && filled(ctx.statefulsets.wait_until_ready().now_or_never())
        && filled(ctx.configmaps.wait_until_ready().now_or_never())
}

/// One look at the current step's window. Unreadable metrics give an
/// Inconclusive report, which never promotes.
async fn look_at_metrics(
    p: &RecommenderPipeline,
    ctx: &Context,
    policy: &RolloutPolicy,
    state: &RolloutState,
    now: Timestamp,
) -> Option<AnalysisReport> {
    let candidate = state.candidate.as_ref()?;
    let query = WindowQuery::for_candidate(&p.name_any(), &p.namespace().unwrap_or_default(), policy, state, now)?;
    let window = match ctx.sources.for_pipeline(p).await {
        Ok(source) => source.window(&query).await.map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    Some(match window {
        // One sequential test across all canary steps (earlier steps' counts
        // are kept in the candidate), so repeated looks keep the error rate.
        Ok(window) => candidate.analyse(policy, &window),
        Err(reason) => {
            warn!(pipeline = %p.name_any(), %reason, "metrics unavailable");
            metrics_unavailable(&reason)
        }
    })
}

/// An object the operator applies: its Rust type, namespace and name.
type AppliedKey = (&'static str, String, String);

/// Hash and resulting resourceVersion of the last apply of each object.
#[derive(Default)]
struct AppliedCache(Mutex<HashMap<AppliedKey, (u64, String)>>);

/// Applies `object` with server-side apply, unless the same object was
/// applied before and the cluster's copy (`current`, from a watch store) is
/// still the one that apply returned. An edit by anyone else changes the
/// resourceVersion, so drift is still corrected.
async fn apply<K>(ctx: &Context, api: &Api<K>, object: &K, current: Option<String>) -> Result<(), Error>
where
    K: Resource + Serialize + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let namespace = object.meta().namespace.clone().unwrap_or_default();
    let key = (std::any::type_name::<K>(), namespace, name.clone());
    let hash = xxhash_rust::xxh3::xxh3_64(&serde_json::to_vec(object).unwrap_or_default());
    let unchanged = {
        let cache = ctx.applied.0.lock().expect("applied cache lock");
        cache.get(&key).is_some_and(|(h, rv)| *h == hash && current.as_ref() == Some(rv))
    };
    if unchanged {
        return Ok(());
    }
    let result = api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object)).await?;
    if let Some(rv) = result.resource_version() {
        ctx.applied.0.lock().expect("applied cache lock").insert(key, (hash, rv));
    }
    Ok(())
}

/// The resourceVersion of an object in a watch store.
fn stored_version<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<String>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    store.get(&ObjectRef::new(name).within(namespace)).and_then(|o| o.meta().resource_version.clone())
}

async fn apply_objects(
    p: &RecommenderPipeline,
    ctx: &Context,
    namespace: &str,
    decision: &Decision,
    versions: &[Arc<ModelVersion>],
    serving: &BTreeSet<String>,
) -> Result<(), Error> {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), namespace);
    let configmaps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);

    let serving_names: Vec<&str> = serving.iter().map(String::as_str).collect();
    let (deployments, services) = (&deployments, &services);
    let deployment = |d: Deployment| {
        let current = stored_version(&ctx.deployments, namespace, &d.name_any());
        async move { apply(ctx, deployments, &d, current).await }
    };
    let service = |s: Service| {
        let current = stored_version(&ctx.services, namespace, &s.name_any());
        async move { apply(ctx, services, &s, current).await }
    };
    let routing = resources::routing_configmap(p, &decision.routing, &serving_names);
    let current = stored_version(&ctx.configmaps, namespace, &routing.name_any());
    apply(ctx, &configmaps, &routing, current).await?;
    service(resources::features_service(p)).await?;
    let features = resources::features_statefulset(p, &ctx.defaults);
    let current = stored_version(&ctx.statefulsets, namespace, &features.name_any());
    apply(ctx, &statefulsets, &features, current).await?;
    for v in versions.iter().filter(|v| serving.contains(&v.name_any())) {
        for component in [Component::Retrieval, Component::Ranking] {
            service(resources::version_service(p, &v.name_any(), component)).await?;
            deployment(resources::version_deployment(p, v, component, &ctx.defaults)).await?;
        }
    }
    create_token_secret(p, ctx, namespace).await?;
    service(resources::gateway_service(p)).await?;
    deployment(resources::gateway_deployment(p, &ctx.defaults)).await?;
    Ok(())
}

/// How long a token Secret seen to exist is trusted to still exist: one
/// that was deleted is created again within this time.
const TOKEN_SECRET_RECHECK: Duration = Duration::from_secs(300);

/// Creates the default token Secret with a random key unless it exists. Only
/// `create` is needed (an existing one answers 409), so the operator never
/// reads a Secret; once seen, it is not asked for again for `TOKEN_SECRET_RECHECK`.
async fn create_token_secret(p: &RecommenderPipeline, ctx: &Context, namespace: &str) -> Result<(), Error> {
    let known = format!("{namespace}/{}/{}", resources::token_secret_name(p), p.uid().unwrap_or_default());
    let seen = ctx.token_secrets.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&known).copied();
    if seen.is_some_and(|at| at.elapsed() < TOKEN_SECRET_RECHECK) {
        return Ok(());
    }
    let random_key = || rand::random::<[u8; 32]>().iter().map(|b| format!("{b:02x}")).collect();
    let Some(secret) = resources::default_token_secret(p, random_key) else { return Ok(()) };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    match secrets
        .create(&PostParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..Default::default() }, &secret)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    ctx.token_secrets.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(known, Instant::now());
    Ok(())
}

/// Removes the per-version objects of versions not in `keep` (serving or
/// draining), and the features Deployment of operators before the
/// StatefulSet, which would otherwise take a share of the events on a volume
/// lost at its next restart.
async fn delete_retired_objects(
    ctx: &Context,
    namespace: &str,
    deployments: &[Arc<Deployment>],
    services: &[Arc<PartialObjectMeta<Service>>],
    keep: &BTreeSet<String>,
) -> Result<(), Error> {
    let retired = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        meta.labels.as_ref().and_then(|l| l.get(reco_api::VERSION_LABEL)).is_some_and(|v| !keep.contains(v))
    };
    let features = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        meta.labels.as_ref().and_then(|l| l.get("app.kubernetes.io/component")).map(String::as_str)
            == Some(Component::Features.as_str())
    };
    let deployment_api: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
    for d in deployments.iter().filter(|d| retired(&d.metadata) || features(&d.metadata)) {
        ignore_not_found(deployment_api.delete(&d.name_any(), &DeleteParams::background()).await.map(|_| ()))?;
    }
    let service_api: Api<Service> = Api::namespaced(ctx.client.clone(), namespace);
    for s in services.iter().filter(|s| retired(&s.metadata)) {
        ignore_not_found(service_api.delete(&s.name_any(), &DeleteParams::background()).await.map(|_| ()))?;
    }
    Ok(())
}

fn ignore_not_found(result: Result<(), kube::Error>) -> Result<(), Error> {
    match result {
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        other => Ok(other?),
    }
}

/// A Kubernetes Event for one transition, on the ModelVersion when it still exists.
async fn announce(p: &RecommenderPipeline, ctx: &Context, versions: &[Arc<ModelVersion>], t: &HistoryEntry) {
    let (reason, type_) = status::transition_reason(t);
    info!(pipeline = %p.name_any(), version = %t.version, from = ?t.from, to = ?t.to, reason = %t.reason, "transition");
    match t.to {
        VersionPhase::RolledBack => ctx.metrics.rolled_back(&p.namespace().unwrap_or_default(), &p.name_any()),
        VersionPhase::Stable if t.from != VersionPhase::Pending => {
            ctx.metrics.promoted(&p.namespace().unwrap_or_default(), &p.name_any())
        }
        _ => {}
    }
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(truncate(&format!("{}: {:?} -> {:?}: {}", t.version, t.from, t.to, t.reason), 1024)),
        action: "Rollout".into(),
        secondary: Some(p.object_ref(&())),
    };
    let regarding =
        versions.iter().find(|v| v.name_any() == t.version).map_or_else(|| p.object_ref(&()), |v| v.object_ref(&()));
    if let Err(error) = ctx.recorder.publish(&event, &regarding).await {
        warn!(%error, "could not publish event");
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => text[..cut].to_owned(),
        None => text.to_owned(),
    }
}

/// Writes `desired` as `object`'s status with server-side apply under the
/// operator's field manager, unless it is the status already there. The
/// write names the resourceVersion the status was derived from: when
/// someone changed the object since, the API answers 409 and the reconcile
/// runs again on fresh data instead of overwriting.
async fn write_status<K, S>(ctx: &Context, object: &K, current: Option<&S>, desired: &S) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if current == Some(desired) {
        return Ok(());
    }
    let namespace = object.meta().namespace.clone().ok_or_else(|| Error::NoNamespace(object.name_any()))?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": { "name": object.name_any(), "resourceVersion": object.resource_version() },
        "status": desired,
    });
    api.patch_status(&object.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch)).await?;
    Ok(())
}

/// An invalid spec changes nothing that serves: it is reported in status
/// and in an Event, and looked at again when the spec changes.
async fn report_invalid_spec(
    p: &RecommenderPipeline,
    ctx: &Context,
    previous: RecommenderPipelineStatus,
    invalid: &InvalidSpec,
    now: Timestamp,
) -> Result<Action, Error> {
    warn!(pipeline = %p.name_any(), field = %invalid.field, message = %invalid.message, "invalid spec");
    let generation = p.metadata.generation;
    let already_reported = status::reports_invalid_spec(&previous, generation);
    let status = status::invalid_spec_status(previous, generation, invalid, now);
    if !already_reported {
        let event = Event {
            type_: EventType::Warning,
            reason: "InvalidSpec".into(),
            note: Some(truncate(&invalid.to_string(), 1024)),
            action: "Validate".into(),
            secondary: None,
        };
        if let Err(error) = ctx.recorder.publish(&event, &p.object_ref(&())).await {
            warn!(%error, "could not publish event");
        }
    }
    write_status(ctx, p, p.status.as_ref(), &status).await?;
    Ok(Action::requeue(INVALID_SPEC_RECHECK))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes_with_jitter() {
        assert_eq!(backoff_delay(1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff_delay(3, 1.0), Duration::from_secs(4));
        assert_eq!(backoff_delay(30, 1.0), Duration::from_secs(300));
        assert_eq!(backoff_delay(3, 0.0), Duration::from_secs(2));
        assert!(backoff_delay(0, 0.5) >= Duration::from_millis(500));
    }

    #[test]
    fn truncates_on_character_boundaries() {
        assert_eq!(truncate("ééé", 2), "éé");
        assert_eq!(truncate("ab", 5), "ab");
    }
}
