//! The in-process backend: a bounded in-memory cache of users over a redb database.
//!
//! - Every user and item lives in the database file as of the last checkpoint; the users in use
//!   live in sharded maps behind short-held locks, and all changes are made there.
//! - A checkpoint ([`FeatureStore::capture`], then [`FeatureStore::save`]) writes the changed
//!   users and items together with the event-log position they cover in ONE transaction, so the
//!   file always holds exactly the events before that position; at start the service replays the
//!   log from there (see `FeatureService::recover`).
//! - At most `max_users` users stay in memory: beyond that the least recently used users without
//!   unsaved changes are dropped, to be read back from the file when next needed. A user with
//!   unsaved changes cannot be dropped; when they alone fill memory, the store asks for a
//!   checkpoint ([`FeatureStore::wants_checkpoint`]). Items stay in memory once used: the item
//!   catalog (set from the seed data set or the served versions) bounds them.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tonic::async_trait;

use crate::model::{FeatureEvent, Limits, UserState, apply_to_item, apply_to_user};
use crate::store::{Capture, Counters, FeatureStore, LogPosition, StoreError};

const SHARDS: usize = 32;
/// Bumped whenever the stored layout changes incompatibly.
pub const FORMAT_VERSION: u32 = 2;
/// Users kept in memory by default.
pub const DEFAULT_MAX_USERS: usize = 100_000;

/// The database's own page cache (redb's default is 1 GiB): users in use are cached above it.
const DB_CACHE_BYTES: usize = 64 << 20;

const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const ITEMS: TableDefinition<&str, &[u8]> = TableDefinition::new("items");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const CHECKPOINT: &str = "checkpoint";

/// The metrics the store records into (unregistered defaults work too).
#[derive(Clone, Default)]
pub struct StoreMetrics {
    pub checkpoint_seconds: Option<Histogram>,
    pub users_in_memory: Gauge,
    pub user_evictions: Counter,
}

/// One cached record. `version` counts changes, `saved` is the version in the file: a record
/// is clean (droppable) when they are equal.
struct Slot<V> {
    value: V,
    version: u64,
    saved: u64,
    used: AtomicU64,
}

impl<V> Slot<V> {
    fn clean(value: V, tick: u64) -> Self {
        Self { value, version: 0, saved: 0, used: AtomicU64::new(tick) }
    }

    fn is_clean(&self) -> bool {
        self.version == self.saved
    }
}

type Shard<V> = RwLock<HashMap<String, Slot<V>>>;

/// The checkpoint record in the `meta` table.
#[derive(Serialize, Deserialize)]
struct CheckpointRecord {
    format: u32,
    position: LogPosition,
}

/// In-memory feature cache over a redb file. Cheap to clone (shared state).
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    users: Vec<Shard<UserState>>,
    items: Vec<Shard<Counters>>,
    db: redb::Database,
    /// For error messages.
    name: String,
    limits: Limits,
    max_users: usize,
    resident: AtomicUsize,
    clock: AtomicU64,
    evicting: Mutex<()>,
    wants_checkpoint: AtomicBool,
    metrics: StoreMetrics,
}

fn shard_of(key: &str) -> usize {
    // Truncation is intended: only the low bits pick the shard.
    (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) as usize) % SHARDS
}

fn shards<V>() -> Vec<Shard<V>> {
    (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect()
}

// A poisoned lock only means another thread panicked mid-update of a plain map; the map is
// still structurally sound, so keep serving rather than failing every later request.
fn read<V>(s: &Shard<V>) -> std::sync::RwLockReadGuard<'_, HashMap<String, Slot<V>>> {
    s.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}
fn write<V>(s: &Shard<V>) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Slot<V>>> {
    s.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl EmbeddedStore {
    /// A store that lives only in memory (tests, `reco standalone` without a data dir).
    pub fn in_memory(limits: Limits) -> Self {
        let db = redb::Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .expect("an in-memory database always opens");
        Self::with(db, "(in memory)".into(), limits, usize::MAX, StoreMetrics::default())
            .expect("an in-memory database always has its tables")
    }

    /// Opens (creating) the store in the redb file at `path`, keeping at most `max_users` users
    /// in memory. A file that exists but cannot be read is an error: starting empty would
    /// silently drop every user's features.
    pub async fn open(
        limits: Limits,
        path: &Path,
        max_users: usize,
        metrics: StoreMetrics,
    ) -> Result<Self, StoreError> {
        let owned = path.to_owned();
        let name = path.display().to_string();
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = owned.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Embedded(format!("{}: {e}", dir.display())))?;
            }
            let db = redb::Database::builder()
                .set_cache_size(DB_CACHE_BYTES)
                .create(&owned)
                .map_err(|e| StoreError::Embedded(format!("{name}: {e}")))?;
            Self::with(db, name, limits, max_users.max(1), metrics)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    fn with(
        db: redb::Database,
        name: String,
        limits: Limits,
        max_users: usize,
        metrics: StoreMetrics,
    ) -> Result<Self, StoreError> {
        let store = Self {
            inner: Arc::new(Inner {
                users: shards(),
                items: shards(),
                db,
                name,
                limits,
                max_users,
                resident: AtomicUsize::new(0),
                clock: AtomicU64::new(0),
                evicting: Mutex::new(()),
                wants_checkpoint: AtomicBool::new(false),
                metrics,
            }),
        };
        // Create the tables, and refuse a file of another layout.
        let txn = store.inner.db.begin_write().map_err(|e| store.error(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| store.error(e))?;
            txn.open_table(USERS).map_err(|e| store.error(e))?;
            txn.open_table(ITEMS).map_err(|e| store.error(e))?;
            let found = meta.get(CHECKPOINT).map_err(|e| store.error(e))?.map(|v| v.value().to_vec());
            match found {
                Some(bytes) => {
                    let record: CheckpointRecord = store.decode(CHECKPOINT, &bytes)?;
                    if record.format != FORMAT_VERSION {
                        return Err(StoreError::Embedded(format!(
                            "{}: format version {}; this build reads version {FORMAT_VERSION}",
                            store.inner.name, record.format
                        )));
                    }
                }
                None => {
                    let record = CheckpointRecord { format: FORMAT_VERSION, position: LogPosition::default() };
                    let bytes = serde_json::to_vec(&record).map_err(|e| store.error(e))?;
                    meta.insert(CHECKPOINT, bytes.as_slice()).map_err(|e| store.error(e))?;
                }
            }
        }
        txn.commit().map_err(|e| store.error(e))?;
        Ok(store)
    }

    fn error(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Embedded(format!("{}: {e}", self.inner.name))
    }

    fn decode<T: DeserializeOwned>(&self, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
        serde_json::from_slice(bytes)
            .map_err(|e| StoreError::Malformed { key: format!("{} {key}", self.inner.name), reason: e.to_string() })
    }

    fn tick(&self) -> u64 {
        self.inner.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// Reads one record from the file.
    fn load<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let txn = self.inner.db.begin_read().map_err(|e| self.error(e))?;
        let table = txn.open_table(table).map_err(|e| self.error(e))?;
        let Some(bytes) = table.get(key).map_err(|e| self.error(e))? else { return Ok(None) };
        self.decode(key, bytes.value()).map(Some)
    }

    /// The slot of `key` in a locked shard, read from the file on a miss. Loading under the
    /// shard's lock keeps it atomic with eviction, which only drops records already in the file.
    fn slot<'a, V: DeserializeOwned>(
        &self,
        shard: &'a mut HashMap<String, Slot<V>>,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        is_user: bool,
    ) -> Result<Option<&'a mut Slot<V>>, StoreError> {
        if !shard.contains_key(key) {
            let Some(value) = self.load(table, key)? else { return Ok(None) };
            shard.insert(key.to_owned(), Slot::clean(value, self.tick()));
            if is_user {
                self.inner.resident.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(shard.get_mut(key))
    }

    /// Applies `change` to the record of `key`, creating it when it is nowhere.
    fn update<V: DeserializeOwned + Default>(
        &self,
        shards: &[Shard<V>],
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        is_user: bool,
        change: impl FnOnce(&mut V),
    ) -> Result<(), StoreError> {
        let mut shard = write(&shards[shard_of(key)]);
        let tick = self.tick();
        let slot = match shard.entry(key.to_owned()) {
            Entry::Occupied(slot) => slot.into_mut(),
            Entry::Vacant(slot) => {
                let value = self.load(table, key)?.unwrap_or_default();
                if is_user {
                    self.inner.resident.fetch_add(1, Ordering::Relaxed);
                }
                slot.insert(Slot::clean(value, tick))
            }
        };
        change(&mut slot.value);
        slot.version += 1;
        slot.used.store(tick, Ordering::Relaxed);
        Ok(())
    }

    /// Drops the least recently used clean users beyond `max_users` (with some slack, so the
    /// scan runs once per many new users rather than for each).
    fn evict_if_over(&self) {
        let max = self.inner.max_users;
        let slack = (max / 16).max(16);
        let resident = self.inner.resident.load(Ordering::Relaxed);
        self.inner.metrics.users_in_memory.set(i64::try_from(resident).unwrap_or(i64::MAX));
        if resident <= max.saturating_add(slack) {
            return;
        }
        let Ok(_one) = self.inner.evicting.try_lock() else { return };
        let excess = resident - max;
        let mut clean: Vec<u64> = Vec::new();
        for shard in &self.inner.users {
            clean.extend(read(shard).values().filter(|s| s.is_clean()).map(|s| s.used.load(Ordering::Relaxed)));
        }
        if clean.len() < excess {
            // Unsaved changes fill memory: only a checkpoint can make them droppable.
            self.inner.wants_checkpoint.store(true, Ordering::Relaxed);
        }
        if clean.is_empty() {
            return;
        }
        let n = excess.min(clean.len());
        let (_, cutoff, _) = clean.select_nth_unstable(n - 1);
        let cutoff = *cutoff;
        let mut dropped = 0usize;
        for shard in &self.inner.users {
            write(shard).retain(|_, s| {
                let drop = dropped < n && s.is_clean() && s.used.load(Ordering::Relaxed) <= cutoff;
                dropped += usize::from(drop);
                !drop
            });
        }
        let resident = self.inner.resident.fetch_sub(dropped, Ordering::Relaxed) - dropped;
        self.inner.metrics.user_evictions.inc_by(dropped as u64);
        self.inner.metrics.users_in_memory.set(i64::try_from(resident).unwrap_or(i64::MAX));
    }

    /// Users held in memory now.
    pub fn users_in_memory(&self) -> usize {
        self.inner.resident.load(Ordering::Relaxed)
    }

    fn write_capture(&self, capture: &Capture, position: &LogPosition) -> Result<(), StoreError> {
        let txn = self.inner.db.begin_write().map_err(|e| self.error(e))?;
        {
            let mut users = txn.open_table(USERS).map_err(|e| self.error(e))?;
            for (id, user, _) in &capture.users {
                let bytes = serde_json::to_vec(user).map_err(|e| self.error(e))?;
                users.insert(id.as_str(), bytes.as_slice()).map_err(|e| self.error(e))?;
            }
            let mut items = txn.open_table(ITEMS).map_err(|e| self.error(e))?;
            for (id, counters, _) in &capture.items {
                let bytes = serde_json::to_vec(counters).map_err(|e| self.error(e))?;
                items.insert(id.as_str(), bytes.as_slice()).map_err(|e| self.error(e))?;
            }
            let mut meta = txn.open_table(META).map_err(|e| self.error(e))?;
            let record = CheckpointRecord { format: FORMAT_VERSION, position: position.clone() };
            let bytes = serde_json::to_vec(&record).map_err(|e| self.error(e))?;
            meta.insert(CHECKPOINT, bytes.as_slice()).map_err(|e| self.error(e))?;
        }
        txn.commit().map_err(|e| self.error(e))
    }
}

/// Marks the saved versions of captured records; a record changed since stays dirty.
fn mark_saved<V>(shards: &[Shard<V>], saved: impl Iterator<Item = (String, u64)>) {
    for (id, version) in saved {
        if let Some(slot) = write(&shards[shard_of(&id)]).get_mut(&id) {
            slot.saved = slot.saved.max(version);
        }
    }
}

/// Re-applies the bounds, which may be smaller than when the user was saved.
fn bounded(mut user: UserState, limits: Limits) -> UserState {
    while user.session.len() > limits.session_len {
        user.session.pop_front();
    }
    while user.history.len() > limits.history_len {
        user.history.pop_front();
    }
    user
}

#[async_trait]
impl FeatureStore for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    fn limits(&self) -> Limits {
        self.inner.limits
    }

    async fn get_user(&self, user_id: &str) -> Result<Option<UserState>, StoreError> {
        let tick = self.tick();
        if let Some(slot) = read(&self.inner.users[shard_of(user_id)]).get(user_id) {
            slot.used.store(tick, Ordering::Relaxed);
            return Ok(Some(bounded(slot.value.clone(), self.inner.limits)));
        }
        let user = {
            let mut shard = write(&self.inner.users[shard_of(user_id)]);
            self.slot(&mut shard, USERS, user_id, true)?.map(|s| bounded(s.value.clone(), self.inner.limits))
        };
        self.evict_if_over();
        Ok(user)
    }

    async fn get_item_counters(&self, item_ids: &[String]) -> Result<Vec<Counters>, StoreError> {
        item_ids
            .iter()
            .map(|id| {
                if let Some(slot) = read(&self.inner.items[shard_of(id)]).get(id) {
                    return Ok(slot.value.clone());
                }
                let mut shard = write(&self.inner.items[shard_of(id)]);
                Ok(self.slot(&mut shard, ITEMS, id, false)?.map(|s| s.value.clone()).unwrap_or_default())
            })
            .collect()
    }

    async fn apply(&self, events: &[FeatureEvent]) -> Result<(), StoreError> {
        let limits = self.inner.limits;
        // Read every record the batch touches first, so that a read error changes nothing: a
        // batch is applied whole or not at all (its retry must not count the first half twice).
        for e in events {
            self.slot(&mut write(&self.inner.users[shard_of(&e.user_id)]), USERS, &e.user_id, true)?;
            self.slot(&mut write(&self.inner.items[shard_of(&e.item_id)]), ITEMS, &e.item_id, false)?;
        }
        for e in events {
            self.update(&self.inner.users, USERS, &e.user_id, true, |user| apply_to_user(user, e, limits))?;
            self.update(&self.inner.items, ITEMS, &e.item_id, false, |counters| apply_to_item(counters, e))?;
        }
        self.evict_if_over();
        Ok(())
    }

    async fn is_empty(&self) -> Result<bool, StoreError> {
        if self.inner.users.iter().any(|s| !read(s).is_empty()) {
            return Ok(false);
        }
        let txn = self.inner.db.begin_read().map_err(|e| self.error(e))?;
        let users = txn.open_table(USERS).map_err(|e| self.error(e))?;
        Ok(users.is_empty().map_err(|e| self.error(e))?)
    }

    async fn put_users(&self, users: BTreeMap<String, UserState>) -> Result<(), StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let txn = store.inner.db.begin_write().map_err(|e| store.error(e))?;
            {
                let mut table = txn.open_table(USERS).map_err(|e| store.error(e))?;
                for (id, user) in &users {
                    let bytes =
                        serde_json::to_vec(&bounded(user.clone(), store.inner.limits)).map_err(|e| store.error(e))?;
                    table.insert(id.as_str(), bytes.as_slice()).map_err(|e| store.error(e))?;
                }
            }
            txn.commit().map_err(|e| store.error(e))?;
            // Cached copies are stale now; they are read back from the file when next used.
            for id in users.keys() {
                if write(&store.inner.users[shard_of(id)]).remove(id).is_some() {
                    store.inner.resident.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    async fn checkpointed(&self) -> Result<Option<LogPosition>, StoreError> {
        let record: Option<CheckpointRecord> = self.load(META, CHECKPOINT)?;
        Ok(Some(record.map(|r| r.position).unwrap_or_default()))
    }

    fn capture(&self) -> Capture {
        fn dirty<V: Clone>(shards: &[Shard<V>]) -> Vec<(String, V, u64)> {
            let mut out = Vec::new();
            for shard in shards {
                out.extend(
                    read(shard)
                        .iter()
                        .filter(|(_, s)| !s.is_clean())
                        .map(|(k, s)| (k.clone(), s.value.clone(), s.version)),
                );
            }
            out
        }
        Capture { users: dirty(&self.inner.users), items: dirty(&self.inner.items) }
    }

    async fn save(&self, capture: Capture, position: LogPosition) -> Result<(), StoreError> {
        let store = self.clone();
        let started = Instant::now();
        tokio::task::spawn_blocking(move || {
            store.write_capture(&capture, &position)?;
            mark_saved(&store.inner.users, capture.users.into_iter().map(|(id, _, v)| (id, v)));
            mark_saved(&store.inner.items, capture.items.into_iter().map(|(id, _, v)| (id, v)));
            store.inner.wants_checkpoint.store(false, Ordering::Relaxed);
            store.evict_if_over();
            Ok::<_, StoreError>(())
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        if let Some(h) = &self.inner.metrics.checkpoint_seconds {
            h.observe(started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    fn wants_checkpoint(&self) -> bool {
        self.inner.wants_checkpoint.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventKind;

    fn event(user: &str, item: &str) -> FeatureEvent {
        FeatureEvent { user_id: user.into(), item_id: item.into(), kind: EventKind::Click, at_ms: 5, dwell_ms: 0 }
    }

    async fn checkpoint(store: &EmbeddedStore, offset: u64) {
        let log = crate::sink::Offsets::from([(0, offset)]);
        store
            .save(store.capture(), LogPosition { log: log.clone(), window: log, unapplied: Vec::new() })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_checkpoint_holds_state_and_position_and_nothing_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("features.redb");
        let store = EmbeddedStore::open(Limits::default(), &path, 10, StoreMetrics::default()).await.unwrap();
        assert_eq!(store.checkpointed().await.unwrap(), Some(LogPosition::default()));
        store.apply(&[event("u1", "i1"), event("u1", "i2")]).await.unwrap();
        checkpoint(&store, 42).await;
        store.apply(&[event("u1", "i3")]).await.unwrap();
        let before = store.get_user("u1").await.unwrap().unwrap();
        drop(store);

        let reopened = EmbeddedStore::open(Limits::default(), &path, 10, StoreMetrics::default()).await.unwrap();
        assert_eq!(reopened.checkpointed().await.unwrap().unwrap().log[&0], 42);
        let user = reopened.get_user("u1").await.unwrap().unwrap();
        assert_eq!(Vec::from(user.history), ["i1", "i2"], "the event after the checkpoint is the log's to replay");
        assert_eq!(before.history.len(), 3);
        assert_eq!(reopened.get_item_counters(&["i2".into(), "i3".into()]).await.unwrap()[0]["click"], 1);
    }

    #[tokio::test]
    async fn memory_holds_at_most_max_users_and_evicted_users_come_back_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (max, users) = (100, 2_000);
        let store = EmbeddedStore::open(Limits::default(), &dir.path().join("f.redb"), max, StoreMetrics::default())
            .await
            .unwrap();
        for batch in 0..users / 100 {
            let events: Vec<_> = (0..100).map(|k| event(&format!("u{}", batch * 100 + k), "i")).collect();
            store.apply(&events).await.unwrap();
            if store.wants_checkpoint() {
                checkpoint(&store, 0).await;
            }
            assert!(store.users_in_memory() <= max + 100 + max / 16 + 16, "{}", store.users_in_memory());
        }
        checkpoint(&store, 0).await;
        for k in [0, 777, users - 1] {
            let user = store.get_user(&format!("u{k}")).await.unwrap().expect("evicted users are read back");
            assert_eq!(user.counters["click"], 1);
        }
        assert_eq!(store.get_item_counters(&["i".into()]).await.unwrap()[0]["click"], users as u64);
        assert!(store.users_in_memory() <= max + max / 16 + 16);
    }

    #[tokio::test]
    async fn a_file_of_another_format_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("features.redb");
        std::fs::write(&path, b"not a database").unwrap();
        let err = EmbeddedStore::open(Limits::default(), &path, 10, StoreMetrics::default()).await.err().unwrap();
        assert!(matches!(err, StoreError::Embedded(_)), "{err}");
    }

    #[tokio::test]
    async fn reads_apply_smaller_bounds() {
        let store = EmbeddedStore::in_memory(Limits::default());
        let events: Vec<_> = (0..10).map(|i| event("u", &format!("i{i}"))).collect();
        store.apply(&events).await.unwrap();
        let users = BTreeMap::from([("u".to_owned(), store.get_user("u").await.unwrap().unwrap())]);
        let small = EmbeddedStore::in_memory(Limits { history_len: 4, session_len: 3, ..Limits::default() });
        small.put_users(users).await.unwrap();
        let user = small.get_user("u").await.unwrap().unwrap();
        assert_eq!((user.history.len(), user.session.len()), (4, 3));
        assert_eq!(user.session.back().unwrap().item_id, "i9");
    }
}
