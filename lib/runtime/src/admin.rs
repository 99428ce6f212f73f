//! `/metrics`, `/healthz` and `/readyz`, the same on every reco process
//! (the gateway merges them into its client API; the other services and the
//! operator serve them alone).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

/// OpenMetrics text, what prometheus-client writes (and the operator's scrape source parses).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The admin endpoints: `/metrics` encodes `registry`; `/healthz` answers while the process
/// serves; `/readyz` answers 200 while `ready()` holds, 503 otherwise.
pub fn admin_router(registry: Arc<Registry>, ready: impl Fn() -> bool + Clone + Send + Sync + 'static) -> Router {
    Router::new()
        .route("/metrics", get(move || metrics(registry.clone())))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready() { (StatusCode::OK, "ready\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready\n") }
                }
            }),
        )
}

/// Serves [`admin_router`] alone on `addr` until `shutdown` resolves.
pub async fn serve_admin(
    addr: SocketAddr,
    registry: Arc<Registry>,
    ready: impl Fn() -> bool + Clone + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, admin_router(registry, ready)).with_graceful_shutdown(shutdown).await
}

async fn metrics(registry: Arc<Registry>) -> impl IntoResponse {
    let mut text = String::new();
    match encode(&mut text, &registry) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("cannot encode metrics: {error}\n"),
        ),
    }
}
