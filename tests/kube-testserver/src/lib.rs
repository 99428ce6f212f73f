//! An in-process Kubernetes API server **test double**.
//!
//! No Kubernetes control plane (kind, k3s, envtest's etcd + kube-apiserver) can be installed on
//! the machines that build and test reco, so the operator's tests talk to this server instead:
//! a real `kube::Client` sends real HTTP to `127.0.0.1`, and the server answers the way the
//! Kubernetes API does for the verbs the operator uses. It is a stand-in, not a Kubernetes
//! implementation: what it simplifies is listed below, and tests that depend on those details
//! need a real cluster.
//!
//! # What it covers
//!
//! * **Resources**: generic JSON storage. Built in: core/v1 `configmaps`, `services`, `events`,
//!   `pods`, `secrets`, `namespaces` (cluster-scoped); apps/v1 `deployments`, `statefulsets`;
//!   coordination.k8s.io/v1 `leases`; events.k8s.io/v1 `events`; discovery.k8s.io/v1
//!   `endpointslices`; policy/v1 `poddisruptionbudgets`; apiextensions.k8s.io/v1
//!   `customresourcedefinitions`. Custom resources are served once their
//!   `CustomResourceDefinition` is registered ([`TestApiServer::register_crd`]) or created
//!   through the API (it then reports `Established`). Unknown resources answer `404`.
//! * **Paths**: `/api/v1/...` and `/apis/{group}/{version}/...`, namespaced and all-namespaces
//!   collections, `/status`, plus minimal discovery (`/api`, `/apis`, resource lists).
//!   Metadata-only requests (`Accept: ...;as=PartialObjectMetadata`, sent for
//!   `Api<PartialObjectMeta<K>>`) get `PartialObjectMetadata` objects, lists and watch events.
//! * **get / list**: `labelSelector` (`=`, `==`, `!=`, `in`, `notin`, exists, `!`, `>`, `<`),
//!   `fieldSelector` on `metadata.name` / `metadata.namespace`, `limit` + `continue` with
//!   `remainingItemCount`, list `metadata.resourceVersion`.
//! * **watch**: `watch=true|1`, `resourceVersion` (unset/`0`: current objects as `ADDED`, else
//!   history replay), `allowWatchBookmarks` (periodic `BOOKMARK`s and one at the end),
//!   `timeoutSeconds`, `sendInitialEvents` (with the `k8s.io/initial-events-end` bookmark),
//!   selector transitions (`ADDED`/`DELETED` when objects start/stop matching), and `410` as an
//!   `ERROR` event when the version is older than the bounded event history.
//! * **create**: `uid`, `creationTimestamp`, `resourceVersion` from one global counter,
//!   `generation: 1`, `generateName`, name validation, `409 AlreadyExists`.
//! * **replace (PUT)** and **patch**: merge patch (RFC 7386), JSON patch (RFC 6902), strategic
//!   merge patch, and **server-side apply** (`fieldManager`, `force`, `managedFields`, removal of
//!   fields a manager stops sending, `409` on conflicting ownership without `force`).
//! * **Optimistic concurrency**: a stale `metadata.resourceVersion` on PUT/PATCH/apply or a
//!   stale `preconditions` on DELETE answers `409 Conflict`; custom resources refuse PUT
//!   without `resourceVersion` (`422`), as the real server does.
//! * **status subresource**: `/status` GET/PUT/PATCH/apply change only `.status`; writes to
//!   the main resource ignore `.status`.
//! * **generation** increments only when something outside `metadata` and `status` changes;
//!   no-op writes keep the `resourceVersion` and emit no event.
//! * **delete**: finalizers (`deletionTimestamp` plus a `generation` bump, removal once the
//!   last finalizer goes), `DELETED` events, owner-reference garbage collection (recursive),
//!   `Orphan` propagation, namespace deletion removing its contents, CRD deletion removing its
//!   objects and type, delete-collection, `dryRun=All` on writes.
//! * **Errors** are `Status` objects (`kind: Status`, `status: Failure`, `reason`, `code`), so
//!   kube-client yields `kube::Error::Api` exactly as against a cluster.
//! * **For tests**: a request log ([`TestApiServer::requests`]), fault injection
//!   ([`TestApiServer::inject_failures`]), storage inspection ([`TestApiServer::objects`],
//!   [`TestApiServer::get_json`]), closing all watches to simulate an API server restart
//!   ([`TestApiServer::close_watches`]), a restart that expires all versions so informers must
//!   re-list ([`TestApiServer::simulate_restart`]), and history compaction
//!   ([`TestApiServer::compact_history`]).
//!
//! # What it simplifies
//!
//! * No authentication, authorization, admission webhooks, defaulting or OpenAPI schema
//!   validation: objects are stored as sent (CRD schemas and CEL rules are not enforced).
//! * Strategic merge patch is applied as a JSON merge patch: lists are replaced whole instead
//!   of merged by their patch-merge keys.
//! * Server-side apply treats every list as atomic (no `listType: map` key merging), records
//!   ownership only for apply operations (PUT and non-apply PATCH do not take ownership of
//!   fields), and keeps one field set per manager and subresource.
//! * Lists are always served from the latest state (`resourceVersion` and
//!   `resourceVersionMatch` on list are accepted and ignored); continue tokens keep the first
//!   page's `resourceVersion` but read later pages from the current state.
//! * Garbage collection is synchronous and `Foreground` behaves like `Background`;
//!   `blockOwnerDeletion` is ignored. Namespaces vanish at once instead of `Terminating`, and
//!   objects may be created in namespaces that do not exist.
//! * `generation` is kept for every resource (the real server skips it for some built-ins such
//!   as ConfigMaps), and graceful deletion periods are not modelled (`deletionGracePeriodSeconds`
//!   is 0; pods are removed at once).
//! * Only JSON bodies (apply also accepts YAML); no protobuf, no table output, no `/scale`,
//!   `/log` or `/exec`. Watch streams are not compressed.
//! * Immediate deletes answer a `Success` `Status` for every resource (some real resources
//!   return the deleted object instead; kube's `Either` covers both).
//!
//! # Example
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use kube::api::{Api, PostParams};
//! use reco_kube_testserver::TestApiServer;
//!
//! let server = TestApiServer::start().await?;
//! let config_maps: Api<ConfigMap> = Api::namespaced(server.client(), "reco");
//! let mut config_map = ConfigMap::default();
//! config_map.metadata.name = Some("settings".into());
//! config_maps.create(&PostParams::default(), &config_map).await?;
//! assert!(server.get_json("", "configmaps", Some("reco"), "settings").is_some());
//! # Ok(())
//! # }
//! ```

mod apply;
mod error;
mod faults;
mod resources;
mod routes;
mod selector;
mod store;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;
use tokio::sync::{oneshot, watch};

pub use error::ApiError;
pub use faults::{FaultRule, RecordedRequest};
pub use resources::{CrdError, ResourceType};

use faults::Traffic;
use routes::{Shared, lock};
use store::Store;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Binding `127.0.0.1:0` failed.
    #[error("could not bind the test API server: {0}")]
    Bind(#[from] std::io::Error),
    /// The listening address did not form a valid URL.
    #[error("invalid server URL {0}")]
    Url(String),
    /// kube-client refused the configuration.
    #[error("could not build a kube client: {0}")]
    Client(#[from] kube::Error),
}

/// Settings for [`TestApiServer::builder`].
#[derive(Debug, Clone)]
pub struct TestApiServerBuilder {
    bookmark_interval: Duration,
    event_history: usize,
}

impl Default for TestApiServerBuilder {
    fn default() -> Self {
        Self { bookmark_interval: Duration::from_secs(1), event_history: 10_000 }
    }
}

impl TestApiServerBuilder {
    /// How often watches that allow bookmarks receive one (default 1 s; the real server
    /// sends them about once a minute, which would slow tests down).
    #[must_use]
    pub fn bookmark_interval(mut self, interval: Duration) -> Self {
        self.bookmark_interval = interval;
        self
    }

    /// How many events the watch history retains (default 10 000); watches from older
    /// versions get `410 Gone`.
    #[must_use]
    pub fn event_history(mut self, events: usize) -> Self {
        self.event_history = events;
        self
    }

    /// Binds `127.0.0.1:0` and starts serving on the current Tokio runtime.
    pub async fn start(self) -> Result<TestApiServer, StartError> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let url = format!("http://{address}");
        let uri = url.parse::<axum::http::Uri>().map_err(|_| StartError::Url(url.clone()))?;
        let client = kube::Client::try_from(kube::Config::new(uri))?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(self.event_history)),
            traffic: Mutex::new(Traffic::default()),
            watch_epoch: watch::channel(0).0,
            bookmark_interval: self.bookmark_interval,
        });
        let (shutdown, stopped) = oneshot::channel::<()>();
        let app = routes::router(Arc::clone(&shared));
        tokio::spawn(async move {
            let serving = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(error) = serving.await {
                tracing::warn!(%error, "test API server stopped with an error");
            }
        });
        Ok(TestApiServer { shared, address, url, client, shutdown: Some(shutdown) })
    }
}

/// A running test API server; stops when dropped.
pub struct TestApiServer {
    shared: Arc<Shared>,
    address: SocketAddr,
    url: String,
    client: kube::Client,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TestApiServer {
    /// Starts a server with default settings.
    pub async fn start() -> Result<Self, StartError> {
        TestApiServerBuilder::default().start().await
    }

    /// Settings for a server that differs from the defaults.
    pub fn builder() -> TestApiServerBuilder {
        TestApiServerBuilder::default()
    }

    /// A client for this server (default namespace `default`, no credentials).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// `http://127.0.0.1:{port}`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The bound address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// A kubeconfig pointing at this server (no credentials), for programs
    /// started as their own process with `KUBECONFIG`.
    pub fn kubeconfig(&self, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: test, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: test, user: {{}}}}]\n\
             contexts: [{{name: test, context: {{cluster: test, user: test, namespace: {namespace}}}}}]\n\
             current-context: test\n",
            self.url()
        )
    }

    /// Serves the custom resource a `CustomResourceDefinition` (as JSON) describes, without
    /// storing the CRD object.
    pub fn register_crd(&self, crd: &Value) -> Result<ResourceType, CrdError> {
        let resource = resources::resource_type_from_crd(crd)?;
        lock(&self.shared.store).register(resource.clone());
        Ok(resource)
    }

    /// [`Self::register_crd`] for a typed CRD, e.g. from `CustomResourceExt::crd()`.
    pub fn register_custom_resource(&self, crd: &CustomResourceDefinition) -> Result<ResourceType, CrdError> {
        let json = serde_json::to_value(crd).map_err(|e| CrdError::Serialize(e.to_string()))?;
        self.register_crd(&json)
    }

    /// Serves an arbitrary resource type (replacing one with the same group and plural).
    pub fn register_resource(&self, resource: ResourceType) {
        lock(&self.shared.store).register(resource);
    }

    /// Stored objects of a resource across namespaces, in namespace/name order, as stored
    /// (storage `apiVersion`). `group` is `""` for the core group.
    pub fn objects(&self, group: &str, plural: &str) -> Vec<Value> {
        lock(&self.shared.store).objects(group, plural)
    }

    /// One stored object; `namespace` is `None` for cluster-scoped resources.
    pub fn get_json(&self, group: &str, plural: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        lock(&self.shared.store).object(group, plural, namespace, name)
    }

    /// The latest committed `resourceVersion`.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.store).resource_version()
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.traffic).requests()
    }

    /// Forgets the request log, so a test can look at one phase only.
    pub fn clear_requests(&self) {
        lock(&self.shared.traffic).clear_requests();
    }

    /// The next `times` requests whose method is `method` (`"*"` for any) and whose path and
    /// query contain `path_contains` fail with HTTP `status` and a matching `Status` body.
    /// Note kube-client's default retry policy retries 429, 503 and 504 on its own.
    pub fn inject_failures(&self, method: &str, path_contains: &str, status: u16, times: usize) {
        lock(&self.shared.traffic).add_rule(FaultRule {
            method: method.to_owned(),
            path_contains: path_contains.to_owned(),
            status,
            remaining: times,
        });
    }

    /// Removes every injected failure that has not been used up (for rules injected with a
    /// large `times` to hold a condition while a test arranges the next step).
    pub fn clear_failures(&self) {
        lock(&self.shared.traffic).clear_rules();
    }

    /// The very next request, whatever it is, fails with HTTP `status`.
    pub fn set_status_code_for_next(&self, status: u16) {
        self.inject_failures("*", "", status, 1);
    }

    /// Ends every open watch abruptly, as an API server restart would; clients reconnect
    /// from their last `resourceVersion`.
    pub fn close_watches(&self) {
        self.shared.watch_epoch.send_modify(|epoch| *epoch += 1);
    }

    /// An API server restart that forces a re-list: every open watch ends and resuming from
    /// any `resourceVersion` handed out before gets `410 Gone` (unlike [`Self::close_watches`],
    /// after which watchers resume where they left off).
    pub fn simulate_restart(&self) {
        lock(&self.shared.store).expire_versions();
        self.close_watches();
    }

    /// Drops the event history (etcd compaction): watches and continue tokens from earlier
    /// versions get `410 Gone`, so clients must re-list.
    pub fn compact_history(&self) {
        lock(&self.shared.store).compact();
    }
}

impl std::fmt::Debug for TestApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestApiServer").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        self.close_watches();
        if let Some(shutdown) = self.shutdown.take() {
            // The serving task may already be gone with its runtime; nothing to stop then.
            let _ = shutdown.send(());
        }
    }
}
