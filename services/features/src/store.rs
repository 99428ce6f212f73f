//! The online feature store: one small object-safe trait with an embedded and a Redis backend.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tonic::async_trait;

use crate::model::{FeatureEvent, Limits, SeedInteraction, SeedUser, UserState, seeded_users};
use crate::sink::{LogPoint, Offsets};

/// Engagement counters by event type name.
pub type Counters = BTreeMap<String, u64>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis key {key} holds malformed data: {reason}")]
    Malformed { key: String, reason: String },
    #[error("embedded store {0}")]
    Embedded(String),
    #[error("feature store task failed: {0}")]
    Task(String),
}

/// Where persisted state stands in the event log, by partition (the file log has one, 0, in
/// bytes; a Kafka topic several, in records): it holds exactly the events before `log`, except
/// the records in `unapplied`; the ids logged from `window` on rebuild the window of recent ids.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPosition {
    pub log: Offsets,
    pub window: Offsets,
    /// Records that reached the log but were never applied (their request failed after the
    /// append; the client's retry was logged again): a replay skips them.
    #[serde(default)]
    pub unapplied: Vec<LogPoint>,
}

/// The records changed since the last checkpoint, with their change counts, as
/// [`FeatureStore::capture`] took them.
#[derive(Default)]
pub struct Capture {
    pub users: Vec<(String, UserState, u64)>,
    pub items: Vec<(String, Counters, u64)>,
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

    /// Where the persisted state stands in the event log, which is replayed from there at start.
    /// `None` for a backend that makes each write durable itself (Redis): nothing to replay.
    async fn checkpointed(&self) -> Result<Option<LogPosition>, StoreError> {
        Ok(None)
    }

    /// Takes the changes not yet saved. Called while no event is being applied, so that the
    /// capture holds exactly the events logged so far.
    fn capture(&self) -> Capture {
        Capture::default()
    }

    /// Saves a capture together with the log position it covers, atomically.
    async fn save(&self, _capture: Capture, _position: LogPosition) -> Result<(), StoreError> {
        Ok(())
    }

    /// True when unsaved changes hold memory above the store's bound: checkpoint soon.
    fn wants_checkpoint(&self) -> bool {
        false
    }
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
