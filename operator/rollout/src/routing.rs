//! The routing table that gateways hot-reload (the operator's routing
//! ConfigMap, the local runner's `routing.yaml`) and the consistent
//! assignment of users to versions.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which versions serve, with what share of users, and which is mirrored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoutingTable {
    pub pipeline: String,
    /// Salt of the user hash; changing it reshuffles users.
    pub salt: String,
    /// Serving versions; weights are percentages that sum to 100.
    pub versions: Vec<RoutedVersion>,
    /// Version that receives a mirrored copy of every request, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RoutedVersion {
    pub name: String,
    pub weight: u8,
}
