//! Names of the metrics the gateway exports and the analysis reads: the
//! contract between them, in one place. Every series carries the labels
//! [`PIPELINE_LABEL`] and [`VERSION_LABEL`].

/// Label naming the RecommenderPipeline.
pub const PIPELINE_LABEL: &str = "pipeline";
/// Label naming the model version that served (or, for shadow series, was mirrored to).
pub const VERSION_LABEL: &str = "model_version";

/// Label of [`IMPRESSIONS`] and [`CLICKS`]: the user's group
/// ([`crate::routing::user_group`], `0`–`999`), which the analysis needs to
/// measure CTR variance across users rather than across impressions.
pub const USER_GROUP_LABEL: &str = "user_group";

/// Counter: items shown to users, once per page produced for a user.
pub const IMPRESSIONS: &str = "reco_impressions_total";
/// Counter: clicks attributed (through the signed token) to an item of the
/// page the token was issued with, once per request and item.
pub const CLICKS: &str = "reco_clicks_total";
/// Counter: recommend requests answered by a version.
pub const REQUESTS: &str = "reco_recommend_requests_total";
/// Counter: recommend requests a version failed (the gateway degraded them).
pub const ERRORS: &str = "reco_recommend_errors_total";
/// Histogram (seconds): recommend latency of a version; series `_bucket`, `_sum`, `_count`.
pub const LATENCY: &str = "reco_recommend_duration_seconds";
/// Counter: requests mirrored to the shadow version.
pub const SHADOW_REQUESTS: &str = "reco_shadow_requests_total";
/// Counter: mirrored requests the shadow version failed.
pub const SHADOW_ERRORS: &str = "reco_shadow_errors_total";
/// Histogram (seconds): latency of the shadow version on mirrored requests.
pub const SHADOW_LATENCY: &str = "reco_shadow_duration_seconds";
