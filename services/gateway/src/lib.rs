//! reco-gateway: the Explore gateway.
//!
//! Clients call `POST /v1/recommend` and `POST /v1/events` (HTTP/JSON) or `reco.v1.Gateway`
//! (gRPC). A recommend request is routed to a model version by the routing table
//! ([`reco_contracts::route_for_user`]), served from a per-user cache or computed by
//! features -> retrieval -> ranking -> [`reco_core::rerank`] under a deadline (fallback items
//! and `degraded: true` when a stage fails or runs late), signed with a token
//! ([`reco_core::token`]) that attributes later clicks to the version, and mirrored to the shadow
//! version in the background. The backends are the proto server traits: in-process services in
//! `reco standalone`, [`remote`] adapters over gRPC in `reco serve gateway`.
//!
//! Entry points for the CLI: [`GatewayArgs`], [`Metrics::register`], [`Backends`] (with
//! [`StaticBackends`] or [`remote_backends`]), [`serve`].

pub mod api;
pub mod args;
pub mod backends;
pub mod config;
pub mod dedup;
pub mod error;
pub mod gateway;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod remote;
pub mod server;

pub use args::GatewayArgs;
pub use backends::{Backends, EndpointBackends, StaticBackends, VersionBackend, VersionBackends, VersionSource};
pub use error::GatewayError;
pub use gateway::{FALLBACK_USER, Gateway};
pub use metrics::Metrics;
pub use server::{remote_backends, serve, serve_on};
