//! Kubernetes `Status` failures.
//!
//! Owns the mapping from "what went wrong" to the `Status` object and HTTP code the real API
//! server would send. Every rejected request goes through [`ApiError`], so `kube::Client` turns
//! it into `kube::Error::Api` with the same `code` and `reason` a cluster would give.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::resources::ResourceType;

/// A request the server refuses, rendered as a `Status` object with `status: Failure`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason} ({code}): {message}")]
pub struct ApiError {
    /// The HTTP status code, repeated in the body as `code`.
    pub code: u16,
    /// The machine-readable `reason` (`NotFound`, `Conflict`, ...).
    pub reason: &'static str,
    /// The human-readable `message`.
    pub message: String,
    /// The optional `details` stanza (`name`, `group`, `kind`, `causes`).
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), details: None }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// The named object does not exist: `deployments.apps "web" not found`.
    pub fn not_found(resource: &ResourceType, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{name}\" not found", resource.qualified_plural()))
            .with_details(object_details(resource, name))
    }

    /// The path names no registered resource (or a subresource that is not served).
    pub fn unknown_resource() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource")
    }

    /// A create collided with an existing object of the same name.
    pub fn already_exists(resource: &ResourceType, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", resource.qualified_plural()))
            .with_details(object_details(resource, name))
    }

    /// Optimistic concurrency failed: the caller's `resourceVersion` is stale.
    pub fn conflict_modified(resource: &ResourceType, name: &str) -> Self {
        Self::conflict(
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// A conflict with a custom explanation (failed preconditions).
    pub fn conflict(resource: &ResourceType, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {} \"{name}\": {why}", resource.qualified_plural()),
        )
        .with_details(object_details(resource, name))
    }

    /// Server-side apply touched fields another manager owns with a different value.
    /// `conflicts` holds `(manager, api_version, field path)` triples.
    pub fn apply_conflict(conflicts: &[(String, String, String)]) -> Self {
        let plural = if conflicts.len() == 1 { "conflict" } else { "conflicts" };
        let listed: Vec<String> = conflicts
            .iter()
            .map(|(manager, api_version, field)| format!("conflict with \"{manager}\" using {api_version}: {field}"))
            .collect();
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(manager, api_version, field)| {
                json!({
                    "reason": "FieldManagerConflict",
                    "message": format!("conflict with \"{manager}\" using {api_version}"),
                    "field": field,
                })
            })
            .collect();
        Self::new(409, "Conflict", format!("Apply failed with {} {plural}: {}", conflicts.len(), listed.join("\n")))
            .with_details(json!({ "causes": causes }))
    }

    /// The request itself is malformed (bad JSON, bad selector, mismatched names).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// The object fails validation (missing name, invalid name, missing field manager).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    /// The requested `resourceVersion` is older than the retained event history.
    pub fn gone(requested: u64, oldest: u64) -> Self {
        Self::new(410, "Expired", format!("too old resource version: {requested} ({oldest})"))
    }

    /// The verb is not served on this path.
    pub fn method_not_allowed(method: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource: {method}"),
        )
    }

    /// The body's content type is not one the verb accepts.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/merge-patch+json, application/json-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml; got {content_type:?}"
            ),
        )
    }

    /// A failure a test asked for through fault injection.
    pub fn injected(code: u16) -> Self {
        let reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            409 => "Conflict",
            410 => "Expired",
            422 => "Invalid",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "InternalError",
        };
        Self::new(code, reason, format!("injected failure (HTTP {code})"))
    }

    /// The `Status` object the real API server sends for this failure.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let (Some(details), Some(body)) = (&self.details, status.as_object_mut()) {
            body.insert("details".to_owned(), details.clone());
        }
        status
    }
}

fn object_details(resource: &ResourceType, name: &str) -> Value {
    json!({ "name": name, "group": resource.group, "kind": resource.plural })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, [(header::CONTENT_TYPE, "application/json")], self.to_status().to_string()).into_response()
    }
}
