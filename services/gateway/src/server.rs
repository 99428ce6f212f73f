//! Startup: build the gateway from flags and backends, serve HTTP and gRPC, run the routing
//! reload and fallback refresh loops until shutdown.

use std::sync::Arc;

use prometheus_client::registry::Registry;
use reco_proto::gateway_server::GatewayServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::args::GatewayArgs;
use crate::backends::{Backends, VersionSource};
use crate::config::Loader;
use crate::dedup::Dedup;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::grpc::GrpcGateway;
use crate::http::{api_router, with_json_fallbacks};
use crate::metrics::Metrics;
use crate::remote::{RemoteEvents, RemoteFeatures, lazy_channel};
use reco_runtime::admin::admin_router;

/// The backends of `reco serve gateway`: features and events over gRPC from --features-url
/// (--events-url), versions from --endpoints-file.
pub fn remote_backends(args: &GatewayArgs) -> Result<Backends, GatewayError> {
    let features_url = args
        .features_url
        .as_deref()
        .ok_or_else(|| GatewayError::Flag("--features-url is required to serve the gateway".to_owned()))?;
    let events_url = args.events_url.as_deref().unwrap_or(features_url);
    let endpoints = args
        .endpoints_file
        .clone()
        .ok_or_else(|| GatewayError::Flag("--endpoints-file is required to serve the gateway".to_owned()))?;
    Ok(Backends {
        features: Arc::new(RemoteFeatures::new(lazy_channel(features_url)?)),
        events: Arc::new(RemoteEvents::new(lazy_channel(events_url)?)),
        versions: VersionSource::EndpointsFile(endpoints),
    })
}

/// Binds --http and --grpc and serves until `shutdown` completes.
///
/// `metrics` must be registered in `registry` (see [`Metrics::register`]); `/metrics` serves the
/// whole registry, so in `reco standalone` register every service's metrics before.
pub async fn serve(
    args: GatewayArgs,
    backends: Backends,
    metrics: Metrics,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let http = TcpListener::bind(args.http).await.map_err(|source| GatewayError::Bind {
        what: "HTTP",
        addr: args.http,
        source,
    })?;
    let grpc = TcpListener::bind(args.grpc).await.map_err(|source| GatewayError::Bind {
        what: "gRPC",
        addr: args.grpc,
        source,
    })?;
    serve_on(http, grpc, args, backends, metrics, registry, shutdown).await
}

/// [`serve`] on listeners already bound (tests bind port 0).
pub async fn serve_on(
    http: TcpListener,
    grpc: TcpListener,
    args: GatewayArgs,
    backends: Backends,
    metrics: Metrics,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let settings = args.settings()?;
    let signer = args.token_signer()?;
    let mut loader = Loader::new(&settings.pipeline, args.routing_file.clone(), backends.versions.clone())?;
    let dedup = Dedup::new(args.dedup_redis_url.as_deref(), &settings, &metrics)?;
    let gateway = Gateway::new(settings, backends.features, backends.events, signer, dedup, metrics);
    if let Some(result) = loader.poll().await {
        gateway.apply_config(result);
    }

    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });
    tokio::spawn(reload_loop(gateway.clone(), loader, cancel.clone()));
    tokio::spawn(fallback_loop(gateway.clone(), cancel.clone()));

    let ready = {
        let gateway = gateway.clone();
        move || gateway.is_ready()
    };
    let router = with_json_fallbacks(api_router(gateway.clone()).merge(admin_router(registry, ready)));
    let http_addr = http.local_addr().map_err(GatewayError::Http)?;
    let grpc_addr = grpc.local_addr().map_err(GatewayError::Http)?;
    tracing::info!(%http_addr, %grpc_addr, pipeline = gateway.settings().pipeline, "gateway serving");
    let http_server = axum::serve(http, router).with_graceful_shutdown(cancel.clone().cancelled_owned());
    let grpc_server = tonic::transport::Server::builder()
        .add_service(GatewayServer::new(GrpcGateway(gateway)))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(grpc),
            cancel.clone().cancelled_owned(),
        );
    let result = tokio::try_join!(async { http_server.await.map_err(GatewayError::Http) }, async {
        grpc_server.await.map_err(GatewayError::Grpc)
    },);
    // Either server failing stops the other and the loops.
    cancel.cancel();
    result.map(|_| ())
}

async fn reload_loop(gateway: Gateway, mut loader: Loader, cancel: CancellationToken) {
    let interval = gateway.settings().reload_interval;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        if let Some(result) = loader.poll().await {
            gateway.apply_config(result);
        }
    }
}

/// Refreshes the fallback list now and then every --fallback-refresh-seconds; retries every
/// second until the first success, so fallback items exist soon after startup.
async fn fallback_loop(gateway: Gateway, cancel: CancellationToken) {
    let period = gateway.settings().fallback_refresh;
    let mut succeeded = false;
    loop {
        match gateway.refresh_fallback().await {
            Ok(count) => {
                tracing::debug!(count, "fallback items refreshed");
                succeeded = true;
            }
            Err(error) => tracing::warn!(%error, "cannot refresh the fallback items"),
        }
        let wait = if succeeded { period } else { period.min(std::time::Duration::from_secs(1)) };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}
