//! The contracts between the reco operator and the reco services, at the
//! bottom of the dependency graph: both sides import them, neither imports
//! the other.
//!
//! - [`routing`]: the routing and endpoints files gateways hot-reload, and the
//!   consistent assignment of users to versions.
//! - [`metrics`]: the names and labels of the series the gateway exports and
//!   the analysis reads.
//! - [`names`]: the Kubernetes name rules objects must follow.
//! - [`artifacts`]: the file names of a model version's artifact directory.

pub mod artifacts;
pub mod metrics;
pub mod names;
pub mod routing;

pub use routing::{
    RoutedVersion, RoutingError, RoutingTable, VersionEndpoints, groups_of_weight, route_for_user, user_bucket,
    user_group,
};
