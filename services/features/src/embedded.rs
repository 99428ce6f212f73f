//! The in-process backend: sharded maps behind short-held locks, snapshotted to a JSON file.
//!
//! Snapshots are written to a temporary file in the same directory, fsynced, then renamed over
//! the previous one (and the directory fsynced), so a crash leaves either the old or the new
//! snapshot, never a torn one. Events acknowledged after the last snapshot live on in the event
//! log; the snapshot only saves replaying it for the online features.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use prometheus_client::metrics::histogram::Histogram;
use serde::{Deserialize, Serialize};
use tonic::async_trait;

use crate::model::{FeatureEvent, Limits, UserState, apply_to_item, apply_to_user};
use crate::store::{Counters, FeatureStore, StoreError};

const SHARDS: usize = 32;
/// Bumped whenever the snapshot layout changes incompatibly.
pub const SNAPSHOT_VERSION: u32 = 1;

type Shard<V> = RwLock<HashMap<String, V>>;

/// In-memory feature store with disk snapshots. Cheap to clone (shared state).
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    users: Vec<Shard<UserState>>,
    items: Vec<Shard<Counters>>,
    limits: Limits,
    snapshot_path: Option<PathBuf>,
    snapshot_seconds: Option<Histogram>,
    /// Serializes snapshots: concurrent ones would share the temporary file.
    snapshotting: tokio::sync::Mutex<()>,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    users: BTreeMap<String, UserState>,
    items: BTreeMap<String, Counters>,
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
fn read<V>(s: &Shard<V>) -> std::sync::RwLockReadGuard<'_, HashMap<String, V>> {
    s.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}
fn write<V>(s: &Shard<V>) -> std::sync::RwLockWriteGuard<'_, HashMap<String, V>> {
    s.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl EmbeddedStore {
    /// A store that lives only in memory (tests, `reco standalone` without a data dir).
    pub fn in_memory(limits: Limits) -> Self {
        Self::with(limits, None, None)
    }

    /// Opens the store persisted at `snapshot_path`, loading the snapshot when one exists.
    /// A snapshot that exists but cannot be read is an error: starting empty would silently
    /// drop every user's features.
    pub async fn open(
        limits: Limits,
        snapshot_path: PathBuf,
        snapshot_seconds: Option<Histogram>,
    ) -> Result<Self, StoreError> {
        let store = Self::with(limits, Some(snapshot_path.clone()), snapshot_seconds);
        let loaded = tokio::task::spawn_blocking(move || read_snapshot(&snapshot_path))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        if let Some(snapshot) = loaded {
            for (id, user) in snapshot.users {
                write(&store.inner.users[shard_of(&id)]).insert(id, bounded(user, limits));
            }
            for (id, counters) in snapshot.items {
                write(&store.inner.items[shard_of(&id)]).insert(id, counters);
            }
        }
        Ok(store)
    }

    fn with(limits: Limits, snapshot_path: Option<PathBuf>, snapshot_seconds: Option<Histogram>) -> Self {
        let snapshotting = tokio::sync::Mutex::new(());
        Self {
            inner: Arc::new(Inner {
                users: shards(),
                items: shards(),
                limits,
                snapshot_path,
                snapshot_seconds,
                snapshotting,
            }),
        }
    }

    fn collect(&self) -> Snapshot {
        let mut users = BTreeMap::new();
        for shard in &self.inner.users {
            users.extend(read(shard).iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let mut items = BTreeMap::new();
        for shard in &self.inner.items {
            items.extend(read(shard).iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Snapshot { version: SNAPSHOT_VERSION, users, items }
    }
}

/// Re-applies the bounds, which may be smaller than when the snapshot was written.
fn bounded(mut user: UserState, limits: Limits) -> UserState {
    while user.session.len() > limits.session_len {
        user.session.pop_front();
    }
    while user.history.len() > limits.history_len {
        user.history.pop_front();
    }
    user
}

fn read_snapshot(path: &Path) -> Result<Option<Snapshot>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StoreError::SnapshotIo { path: path.to_owned(), source }),
    };
    #[derive(Deserialize)]
    struct Header {
        version: u32,
    }
    let header: Header = serde_json::from_slice(&bytes)
        .map_err(|source| StoreError::SnapshotFormat { path: path.to_owned(), source })?;
    if header.version != SNAPSHOT_VERSION {
        return Err(StoreError::SnapshotVersion {
            path: path.to_owned(),
            found: header.version,
            expected: SNAPSHOT_VERSION,
        });
    }
    let snapshot = serde_json::from_slice(&bytes)
        .map_err(|source| StoreError::SnapshotFormat { path: path.to_owned(), source })?;
    Ok(Some(snapshot))
}

fn write_snapshot(path: &Path, snapshot: &Snapshot) -> Result<(), StoreError> {
    reco_runtime::fs::save_atomic_with(path, |file| {
        serde_json::to_writer(file, snapshot).map_err(std::io::Error::other)
    })
    .map_err(|source| StoreError::SnapshotIo { path: path.to_owned(), source })
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
        Ok(read(&self.inner.users[shard_of(user_id)]).get(user_id).cloned())
    }

    async fn get_item_counters(&self, item_ids: &[String]) -> Result<Vec<Counters>, StoreError> {
        Ok(item_ids
            .iter()
            .map(|id| read(&self.inner.items[shard_of(id)]).get(id).cloned().unwrap_or_default())
            .collect())
    }

    async fn apply(&self, events: &[FeatureEvent]) -> Result<(), StoreError> {
        for e in events {
            {
                let mut users = write(&self.inner.users[shard_of(&e.user_id)]);
                apply_to_user(users.entry(e.user_id.clone()).or_default(), e, self.inner.limits);
            }
            let mut items = write(&self.inner.items[shard_of(&e.item_id)]);
            apply_to_item(items.entry(e.item_id.clone()).or_default(), e);
        }
        Ok(())
    }

    async fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.inner.users.iter().all(|s| read(s).is_empty()))
    }

    async fn put_users(&self, users: BTreeMap<String, UserState>) -> Result<(), StoreError> {
        for (id, user) in users {
            write(&self.inner.users[shard_of(&id)]).insert(id, bounded(user, self.inner.limits));
        }
        Ok(())
    }

    async fn persist(&self) -> Result<(), StoreError> {
        let Some(path) = self.inner.snapshot_path.clone() else {
            return Ok(());
        };
        let _one_at_a_time = self.inner.snapshotting.lock().await;
        let store = self.clone();
        let started = Instant::now();
        tokio::task::spawn_blocking(move || write_snapshot(&path, &store.collect()))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        if let Some(h) = &self.inner.snapshot_seconds {
            h.observe(started.elapsed().as_secs_f64());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventKind;

    fn event(user: &str, item: &str) -> FeatureEvent {
        FeatureEvent { user_id: user.into(), item_id: item.into(), kind: EventKind::Click, at_ms: 5, dwell_ms: 0 }
    }

    #[tokio::test]
    async fn snapshot_round_trips_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("features.json");
        let store = EmbeddedStore::open(Limits::default(), path.clone(), None).await.unwrap();
        store.apply(&[event("u1", "i1"), event("u1", "i2")]).await.unwrap();
        store.persist().await.unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["features.json"]);

        let reopened = EmbeddedStore::open(Limits::default(), path, None).await.unwrap();
        assert_eq!(reopened.get_user("u1").await.unwrap(), store.get_user("u1").await.unwrap());
        assert_eq!(reopened.get_item_counters(&["i2".into()]).await.unwrap()[0]["click"], 1);
    }

    #[tokio::test]
    async fn a_corrupt_or_future_snapshot_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("features.json");
        std::fs::write(&path, b"{\"version\": 1, \"users\": {").unwrap();
        let err = EmbeddedStore::open(Limits::default(), path.clone(), None).await.err().unwrap();
        assert!(matches!(err, StoreError::SnapshotFormat { .. }), "{err}");

        std::fs::write(&path, br#"{"version": 99, "whatever": true}"#).unwrap();
        let err = EmbeddedStore::open(Limits::default(), path, None).await.err().unwrap();
        assert!(matches!(err, StoreError::SnapshotVersion { found: 99, .. }), "{err}");
    }

    #[tokio::test]
    async fn reload_applies_smaller_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        let store = EmbeddedStore::open(Limits::default(), path.clone(), None).await.unwrap();
        let events: Vec<_> = (0..10).map(|i| event("u", &format!("i{i}"))).collect();
        store.apply(&events).await.unwrap();
        store.persist().await.unwrap();
        let small = Limits { history_len: 4, session_len: 3 };
        let reopened = EmbeddedStore::open(small, path, None).await.unwrap();
        let user = reopened.get_user("u").await.unwrap().unwrap();
        assert_eq!((user.history.len(), user.session.len()), (4, 3));
        assert_eq!(user.session.back().unwrap().item_id, "i9");
    }
}
