//! The online feature store: one small object-safe trait with an embedded and a Redis backend.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tonic::async_trait;

use crate::model::{FeatureEvent, Limits, SeedInteraction, SeedUser, UserState, seeded_users};

/// Engagement counters by event type name.
pub type Counters = BTreeMap<String, u64>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis key {key} holds malformed data: {reason}")]
    Malformed { key: String, reason: String },
    #[error("snapshot {path}: {source}")]
    SnapshotIo { path: PathBuf, source: std::io::Error },
    #[error("snapshot {path} is not a valid snapshot: {source}")]
    SnapshotFormat { path: PathBuf, source: serde_json::Error },
    #[error("snapshot {path} has format version {found}; this build reads version {expected}")]
    SnapshotVersion { path: PathBuf, found: u32, expected: u32 },
    #[error("snapshot task failed: {0}")]
    Task(String),
}

/// Online user and item features. Every write is visible to the next read (read-your-writes),
/// which is what lets an event change the very next recommendation.
#[async_trait]
pub trait FeatureStore: Send + Sync {
    /// `"embedded"` or `"redis"`, the metrics label.
    fn backend(&self) -> &'static str;

    fn limits(&self) -> Limits;

    /// `None` for a user the store has never seen.
    async fn get_user(&self, user_id: &str) -> Result<Option<UserState>, StoreError>;

    /// Counters of each item, in the order asked; unknown items have empty counters.
    async fn get_item_counters(&self, item_ids: &[String]) -> Result<Vec<Counters>, StoreError>;

    /// Applies validated events in order (session, history, user and item counters).
    async fn apply(&self, events: &[FeatureEvent]) -> Result<(), StoreError>;

    /// True when the store holds no user at all.
    async fn is_empty(&self) -> Result<bool, StoreError>;

    /// Bulk-writes whole users, replacing any with the same id.
    async fn put_users(&self, users: BTreeMap<String, UserState>) -> Result<(), StoreError>;

    /// Makes the current state durable where the backend owns durability (the embedded
    /// snapshot); a no-op for Redis, which persists on its own.
    async fn persist(&self) -> Result<(), StoreError>;
}

/// What [`seed_if_empty`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeedOutcome {
    /// The store was empty and now holds this many users.
    Seeded { users: usize },
    /// The store already held users (a reloaded snapshot or a shared Redis); nothing was written,
    /// so restarts never overwrite live features with the dataset.
    AlreadyPopulated,
}

/// Loads a dataset's users (demographics) and historical interactions (long-term history) into
/// an empty store. Does nothing when the store already holds users: existing state wins.
pub async fn seed_if_empty(
    store: &dyn FeatureStore,
    users: &[SeedUser],
    interactions: &[SeedInteraction],
) -> Result<SeedOutcome, StoreError> {
    if !store.is_empty().await? {
        return Ok(SeedOutcome::AlreadyPopulated);
    }
    let seeded = seeded_users(users, interactions, store.limits());
    let count = seeded.len();
    store.put_users(seeded).await?;
    Ok(SeedOutcome::Seeded { users: count })
}
