//! Resource types the server serves.
//!
//! Owns the registry that maps an API path (`group`, `version`, `plural`) to what the real API
//! server knows about the resource: its kind, whether it is namespaced, which versions are served
//! and whether it has a `status` subresource. Built-in types are registered up front; custom
//! resources come from `CustomResourceDefinition` objects, either handed over by a test or
//! created through the API like `kubectl apply -f crd.yaml` would.

use serde_json::Value;

/// What the server knows about one resource, mirroring an `APIResource` in discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the core (`/api/v1`) group.
    pub group: String,
    /// Served versions; the first one is the storage version.
    pub versions: Vec<String>,
    /// Lower-case plural used in paths (`deployments`).
    pub plural: String,
    /// `kind` of a single object (`Deployment`).
    pub kind: String,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Whether `.status` is only writable through the `/status` subresource.
    pub status_subresource: bool,
    /// Whether PUT may omit `metadata.resourceVersion` (true for built-ins; custom resources
    /// insist on it, answering `422 Invalid`).
    pub unconditional_update: bool,
}

impl ResourceType {
    fn builtin(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool, status: bool) -> Self {
        Self {
            group: group.to_owned(),
            versions: vec![version.to_owned()],
            plural: plural.to_owned(),
            kind: kind.to_owned(),
            namespaced,
            status_subresource: status,
            unconditional_update: true,
        }
    }

    /// The `apiVersion` string for `version` (`v1` for core, `apps/v1` otherwise).
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() { version.to_owned() } else { format!("{}/{version}", self.group) }
    }

    /// `plural.group` as the real server names resources in messages (`deployments.apps`).
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() { self.plural.clone() } else { format!("{}.{}", self.plural, self.group) }
    }

    /// Whether this is the `customresourcedefinitions` resource, whose writes register types.
    pub fn is_crd_resource(&self) -> bool {
        self.group == "apiextensions.k8s.io" && self.plural == "customresourcedefinitions"
    }
}

/// Why a `CustomResourceDefinition` could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrdError {
    /// A field the registration needs is absent or not a string.
    #[error("CustomResourceDefinition is missing {0}")]
    MissingField(&'static str),
    /// `spec.scope` is neither `Namespaced` nor `Cluster`.
    #[error("CustomResourceDefinition has unknown scope {0:?}")]
    UnknownScope(String),
    /// No entry of `spec.versions` has `served: true`.
    #[error("CustomResourceDefinition serves no version")]
    NoServedVersion,
    /// The typed object could not be turned into JSON.
    #[error("CustomResourceDefinition could not be serialized: {0}")]
    Serialize(String),
}

/// The set of served resource types.
#[derive(Debug, Clone)]
pub struct Registry {
    types: Vec<ResourceType>,
}

impl Registry {
    /// The built-in types the reco operator touches.
    pub fn with_builtins() -> Self {
        let b = ResourceType::builtin;
        Self {
            types: vec![
                b("", "v1", "configmaps", "ConfigMap", true, false),
                b("", "v1", "services", "Service", true, true),
                b("", "v1", "events", "Event", true, false),
                b("", "v1", "pods", "Pod", true, true),
                b("", "v1", "secrets", "Secret", true, false),
                b("", "v1", "namespaces", "Namespace", false, true),
                b("apps", "v1", "deployments", "Deployment", true, true),
                b("apps", "v1", "statefulsets", "StatefulSet", true, true),
                b("coordination.k8s.io", "v1", "leases", "Lease", true, false),
                b("events.k8s.io", "v1", "events", "Event", true, false),
                b("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", true, false),
                b("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", true, true),
                b("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", false, true),
            ],
        }
    }

    /// The type served at `group`/`version`/`plural`, if any.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types.iter().find(|t| t.group == group && t.plural == plural && t.versions.iter().any(|v| v == version))
    }

    /// All served types, for discovery.
    pub fn types(&self) -> &[ResourceType] {
        &self.types
    }

    /// Stops serving `group`/`plural` (its CRD was deleted).
    pub fn unregister(&mut self, group: &str, plural: &str) {
        self.types.retain(|t| !(t.group == group && t.plural == plural));
    }

    /// Adds `resource`, replacing an earlier registration of the same group and plural
    /// (a CRD update changes served versions or subresources in place).
    pub fn register(&mut self, resource: ResourceType) {
        self.types.retain(|t| !(t.group == resource.group && t.plural == resource.plural));
        self.types.push(resource);
    }
}

/// Reads the registration out of an `apiextensions.k8s.io/v1` `CustomResourceDefinition`.
///
/// The storage version goes first so stored objects carry it; the status subresource counts as
/// enabled when any served version declares it.
pub fn resource_type_from_crd(crd: &Value) -> Result<ResourceType, CrdError> {
    let spec = crd.get("spec").ok_or(CrdError::MissingField("spec"))?;
    let text = |value: Option<&Value>, field: &'static str| {
        value.and_then(Value::as_str).map(str::to_owned).ok_or(CrdError::MissingField(field))
    };
    let group = text(spec.get("group"), "spec.group")?;
    let names = spec.get("names").ok_or(CrdError::MissingField("spec.names"))?;
    let plural = text(names.get("plural"), "spec.names.plural")?;
    let kind = text(names.get("kind"), "spec.names.kind")?;
    let namespaced = match text(spec.get("scope"), "spec.scope")?.as_str() {
        "Namespaced" => true,
        "Cluster" => false,
        other => return Err(CrdError::UnknownScope(other.to_owned())),
    };
    let versions = spec.get("versions").and_then(Value::as_array).ok_or(CrdError::MissingField("spec.versions"))?;
    let served: Vec<&Value> =
        versions.iter().filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(false)).collect();
    let mut names_in_order: Vec<String> = Vec::new();
    for version in &served {
        let name = text(version.get("name"), "spec.versions[].name")?;
        let is_storage = version.get("storage").and_then(Value::as_bool).unwrap_or(false);
        if is_storage { names_in_order.insert(0, name) } else { names_in_order.push(name) }
    }
    if names_in_order.is_empty() {
        return Err(CrdError::NoServedVersion);
    }
    let status_subresource = served.iter().any(|v| v.pointer("/subresources/status").is_some_and(|s| !s.is_null()));
    Ok(ResourceType {
        group,
        versions: names_in_order,
        plural,
        kind,
        namespaced,
        status_subresource,
        unconditional_update: false,
    })
}
