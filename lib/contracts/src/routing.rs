//! The routing table that gateways hot-reload (the operator's routing
//! ConfigMap, the local runner's `routing.yaml`), the endpoints file that
//! says where each version's services are, and the consistent assignment of
//! users to versions.
//!
//! A user's bucket is `xxh3_64_with_seed(user_id, seed) % 10_000` with
//! `seed = xxh3_64(salt)`. Versions take consecutive bucket ranges in table
//! order, `weight × 100` buckets each, from bucket 0: the engine lists the
//! candidate first, so it owns `[0, weight × 100)` and a user on the canary
//! stays on it as its weight grows.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// File (and ConfigMap key) of the routing table.
pub const ROUTING_FILE: &str = "routing.yaml";
/// File (and ConfigMap key) of the endpoints: [`Endpoints`].
pub const ENDPOINTS_FILE: &str = "endpoints.yaml";

/// Number of hash buckets users are spread over (a 0.01% resolution).
pub const BUCKETS: u64 = 10_000;

/// Number of user groups: the analysis's unit of variance. A group is 10
/// consecutive routing buckets (0.1% of users), so it lies wholly on one
/// side of every split the routing can make, at any weight. Clicks of one
/// user are correlated; groups of users are independent, so the spread of
/// CTR across groups, not the binomial formula, measures its noise.
pub const USER_GROUPS: u64 = 1_000;

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

/// Why a routing table cannot be served.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    #[error("routing table of pipeline {pipeline:?} lists no version")]
    Empty { pipeline: String },
    #[error("routing table of pipeline {pipeline:?} has a version with an empty name")]
    EmptyName { pipeline: String },
    #[error("routing table of pipeline {pipeline:?} lists version {version:?} twice")]
    Duplicate { pipeline: String, version: String },
    #[error("routing table of pipeline {pipeline:?} has weights summing to {sum}, not 100")]
    WeightSum { pipeline: String, sum: u32 },
}

impl RoutingTable {
    /// Checks what gateways rely on before swapping a hot-reloaded table in.
    pub fn validate(&self) -> Result<(), RoutingError> {
        let pipeline = || self.pipeline.clone();
        if self.versions.is_empty() {
            return Err(RoutingError::Empty { pipeline: pipeline() });
        }
        let names = self.versions.iter().map(|version| &version.name).chain(&self.shadow);
        if names.clone().any(String::is_empty) {
            return Err(RoutingError::EmptyName { pipeline: pipeline() });
        }
        let mut seen = BTreeSet::new();
        if let Some(version) = self.versions.iter().find(|version| !seen.insert(&version.name)) {
            return Err(RoutingError::Duplicate { pipeline: pipeline(), version: version.name.clone() });
        }
        let sum: u32 = self.versions.iter().map(|version| u32::from(version.weight)).sum();
        if sum != 100 {
            return Err(RoutingError::WeightSum { pipeline: pipeline(), sum });
        }
        Ok(())
    }
}

/// Addresses of one version's retrieval and ranking gRPC services.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VersionEndpoints {
    pub retrieval: String,
    pub ranking: String,
}

/// The endpoints file: version name to its services.
pub type Endpoints = BTreeMap<String, VersionEndpoints>;

/// The version that serves `user_id`; `None` only for a table whose weights
/// sum to less than 100 (one that fails [`RoutingTable::validate`]).
pub fn route_for_user<'t>(table: &'t RoutingTable, user_id: &str) -> Option<&'t str> {
    let bucket = user_bucket(&table.salt, user_id);
    let mut end = 0;
    table.versions.iter().find_map(|version| {
        end += u64::from(version.weight) * (BUCKETS / 100);
        (bucket < end).then_some(version.name.as_str())
    })
}

/// The user's bucket in `[0, BUCKETS)`, stable for a given salt.
pub fn user_bucket(salt: &str, user_id: &str) -> u64 {
    xxh3_64_with_seed(user_id.as_bytes(), xxh3_64(salt.as_bytes())) % BUCKETS
}

/// The user group in `[0, USER_GROUPS)` of a routing bucket.
pub fn user_group(bucket: u64) -> u64 {
    bucket / (BUCKETS / USER_GROUPS)
}

/// The user groups a version at `[start, start + weight)` percent of the
/// routing range owns: `weight × USER_GROUPS / 100` of them.
pub fn groups_of_weight(weight: u8) -> u64 {
    u64::from(weight) * USER_GROUPS / 100
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(versions: &[(&str, u8)], shadow: Option<&str>) -> RoutingTable {
        RoutingTable {
            pipeline: "home".to_owned(),
            salt: "s1".to_owned(),
            versions: versions
                .iter()
                .map(|(name, weight)| RoutedVersion { name: (*name).to_owned(), weight: *weight })
                .collect(),
            shadow: shadow.map(str::to_owned),
        }
    }

    #[test]
    fn validate_names_the_problem() {
        let pipeline = "home".to_owned();
        let cases = [
            (table(&[("v1", 100)], None), Ok(())),
            (table(&[("v2", 5), ("v1", 95)], None), Ok(())),
            (table(&[("v2", 100), ("v1", 0)], None), Ok(())),
            (table(&[("v1", 100)], Some("v2")), Ok(())),
            (table(&[], None), Err(RoutingError::Empty { pipeline: pipeline.clone() })),
            (table(&[("", 100)], None), Err(RoutingError::EmptyName { pipeline: pipeline.clone() })),
            (table(&[("v1", 100)], Some("")), Err(RoutingError::EmptyName { pipeline: pipeline.clone() })),
            (
                table(&[("v1", 50), ("v1", 50)], None),
                Err(RoutingError::Duplicate { pipeline: pipeline.clone(), version: "v1".to_owned() }),
            ),
            (
                table(&[("v2", 5), ("v1", 90)], None),
                Err(RoutingError::WeightSum { pipeline: pipeline.clone(), sum: 95 }),
            ),
            (table(&[("v2", 200), ("v1", 200)], None), Err(RoutingError::WeightSum { pipeline, sum: 400 })),
        ];
        for (table, expected) in cases {
            assert_eq!(table.validate(), expected, "{table:?}");
        }
    }

    #[test]
    fn errors_read_well() {
        let error = table(&[("v2", 5), ("v1", 90)], None).validate().unwrap_err();
        assert_eq!(error.to_string(), "routing table of pipeline \"home\" has weights summing to 95, not 100");
    }

    #[test]
    fn users_split_by_weight() {
        let table = table(&[("v2", 10), ("v1", 90)], None);
        let on_candidate =
            (0..20_000).filter(|user| route_for_user(&table, &format!("user-{user}")) == Some("v2")).count();
        // 10% of 20,000 users, within 5 standard deviations (±212).
        assert!((1_788..=2_212).contains(&on_candidate), "{on_candidate}");
    }

    #[test]
    fn canary_users_stay_on_the_canary_as_it_grows() {
        let users: Vec<String> = (0..5_000).map(|user| format!("user-{user}")).collect();
        let mut previous: Vec<&str> = Vec::new();
        for weight in [1, 5, 25, 50, 100] {
            let table = table(&[("v2", weight), ("v1", 100 - weight)], None);
            let on_candidate: Vec<&str> =
                users.iter().filter(|user| route_for_user(&table, user) == Some("v2")).map(String::as_str).collect();
            assert!(previous.iter().all(|user| on_candidate.contains(user)), "weight {weight}");
            previous = on_candidate;
        }
        assert_eq!(previous.len(), users.len());
    }

    #[test]
    fn salt_reshuffles_users() {
        let moved = (0..1_000)
            .filter(|user| user_bucket("a", &format!("user-{user}")) != user_bucket("b", &format!("user-{user}")))
            .count();
        assert!(moved > 990, "{moved}");
        assert_eq!(user_bucket("a", "user-1"), user_bucket("a", "user-1"));
    }

    #[test]
    fn a_user_group_lies_on_one_side_of_every_split() {
        for weight in 0..=100u8 {
            let boundary = u64::from(weight) * (BUCKETS / 100);
            for bucket in [boundary.saturating_sub(1), boundary] {
                let side = |bucket: u64| bucket < boundary;
                let group = user_group(bucket);
                let first = group * (BUCKETS / USER_GROUPS);
                assert_eq!(side(first), side(first + BUCKETS / USER_GROUPS - 1), "weight {weight}, group {group}");
            }
            assert_eq!(groups_of_weight(weight), user_group(boundary), "weight {weight}");
        }
        assert_eq!(user_group(BUCKETS - 1), USER_GROUPS - 1);
    }

    #[test]
    fn short_tables_leave_users_unrouted() {
        assert_eq!(route_for_user(&table(&[], None), "user-1"), None);
        let full = table(&[("v1", 100)], None);
        assert_eq!(route_for_user(&full, "user-1"), Some("v1"));
    }
}
