//! The Redis backend. Keys are namespaced by pipeline (`reco:{pipeline}:...`) so pipelines can
//! share one server. Each user is a few native structures so that an event is a handful of
//! in-place commands (no read-modify-write race between feature replicas):
//!
//! - `user:demo:{id}` hash (age, gender, occupation, zip)
//! - `user:hist:{id}` list of item ids, oldest first, trimmed to the history bound
//! - `user:sess:{id}` list of JSON session entries, trimmed to the session bound
//! - `user:cnt:{id}` / `item:cnt:{id}` hashes of counters by event type
//! - `populated`: set once any user was written (seeding loads only an empty store)
//! - `log:applied` hash: by Kafka partition, the next offset to apply (partition owners only)
//! - `event:{id}` the ids applied by partition owners, for the id TTL
//!
//! Every key of a user or item carries a TTL, renewed by each event: the session
//! `Limits::session_ttl`, the rest `Limits::state_ttl`, so Redis forgets idle users instead of
//! growing with every user id ever seen. A user is known while any of its keys exists.
//!
//! Events are written by one server-side script (`redis_apply.lua`) and reads go through
//! MULTI/EXEC, so a reader sees a batch of events entirely or not at all.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tonic::async_trait;

use crate::model::{Demographics, FeatureEvent, Limits, SessionEntry, UserState};
use crate::sink::{Offsets, Partition};
use crate::store::{Counters, FeatureStore, StoreError};

/// Users written per pipeline when bulk-loading, to bound the size of one request.
const PUT_CHUNK: usize = 256;
/// Events applied per script call, to bound how long one call holds the server.
const APPLY_CHUNK: usize = 512;
/// How long an applied event id is remembered by default (a retry within it is not applied again).
const DEFAULT_ID_TTL: Duration = Duration::from_secs(600);

/// Every write of events, in one server-side script: see its header for the protocol.
static APPLY: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("redis_apply.lua")));

/// One record of the event log for [`RedisStore::apply_logged`].
#[derive(Clone, Copy, Debug)]
pub struct LoggedRecord<'a> {
    /// Its offset in its partition.
    pub offset: u64,
    pub event: &'a FeatureEvent,
    /// Its event id, as logged; `None`: applied without a check for retries.
    pub id: Option<&'a str>,
}

/// What [`RedisStore::apply_logged`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub applied: u64,
    /// Retries of an applied event (the same id logged again), not applied.
    pub duplicates: u64,
}

/// Feature store on a Redis server.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    limits: Limits,
    id_ttl_seconds: u64,
}

impl RedisStore {
    /// Connects to `url` (e.g. `redis://127.0.0.1:6379`); the connection manager reconnects on its own.
    pub async fn connect(url: &str, pipeline: &str, limits: Limits) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)?;
        let conn = client.get_connection_manager().await?;
        Ok(Self { conn, prefix: format!("reco:{pipeline}:"), limits, id_ttl_seconds: DEFAULT_ID_TTL.as_secs() })
    }

    /// How long [`RedisStore::apply_logged`] remembers an applied event id.
    pub fn with_id_ttl(mut self, ttl: Duration) -> Self {
        self.id_ttl_seconds = ttl.as_secs().max(1);
        self
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }

    fn populated_key(&self) -> String {
        format!("{}populated", self.prefix)
    }

    fn ttls(&self) -> (i64, i64) {
        let secs = |d: std::time::Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX).max(1);
        (secs(self.limits.session_ttl), secs(self.limits.state_ttl))
    }

    /// Applies the records of `partition` that its applied offset (kept in Redis beside the
    /// features, moved in the same atomic step) has not passed, each event id once within the id
    /// TTL, so that a record read twice (a rebalance, a restart) or an event logged twice (a
    /// client's retry through another replica) changes the features once.
    pub async fn apply_logged(
        &self,
        partition: Partition,
        records: &[LoggedRecord<'_>],
    ) -> Result<Applied, StoreError> {
        let mut total = Applied::default();
        for chunk in records.chunks(APPLY_CHUNK) {
            let done = self.run_apply(Some(partition), chunk).await?;
            total.applied += done.applied;
            total.duplicates += done.duplicates;
        }
        Ok(total)
    }

    /// How far each partition's records have been applied (the next offset to apply); absent:
    /// none yet.
    pub async fn applied_offsets(&self, partitions: &[Partition]) -> Result<Offsets, StoreError> {
        if partitions.is_empty() {
            return Ok(Offsets::new());
        }
        let key = self.applied_key();
        let raw: Vec<Option<String>> =
            redis::cmd("HMGET").arg(&key).arg(partitions).query_async(&mut self.conn.clone()).await?;
        let mut offsets = Offsets::new();
        for (partition, value) in partitions.iter().zip(raw) {
            let Some(value) = value else { continue };
            let offset = value.parse::<u64>().map_err(|_| StoreError::Malformed {
                key: key.clone(),
                reason: format!("partition {partition} offset is {value:?}"),
            })?;
            offsets.insert(*partition, offset);
        }
        Ok(offsets)
    }

    fn applied_key(&self) -> String {
        format!("{}log:applied", self.prefix)
    }

    async fn run_apply(
        &self,
        partition: Option<Partition>,
        records: &[LoggedRecord<'_>],
    ) -> Result<Applied, StoreError> {
        if records.is_empty() {
            return Ok(Applied::default());
        }
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let (session_ttl, state_ttl) = self.ttls();
        let mut call = APPLY.prepare_invoke();
        call.key(self.applied_key()).key(self.populated_key());
        call.arg(partition.map(|p| p.to_string()).unwrap_or_default())
            .arg(clamp(self.limits.session_len))
            .arg(clamp(self.limits.history_len))
            .arg(session_ttl)
            .arg(state_ttl)
            .arg(self.id_ttl_seconds);
        for LoggedRecord { offset, event: e, id } in records {
            let sess = self.key("user:sess", &e.user_id);
            let entry = SessionEntry {
                item_id: e.item_id.clone(),
                kind: e.kind.name().to_owned(),
                at_ms: e.at_ms,
                dwell_ms: e.dwell_ms,
            };
            let entry = serde_json::to_string(&entry)
                .map_err(|err| StoreError::Malformed { key: sess.clone(), reason: err.to_string() })?;
            call.key(sess)
                .key(self.key("user:cnt", &e.user_id))
                .key(self.key("user:hist", &e.user_id))
                .key(self.key("user:demo", &e.user_id))
                .key(self.key("item:cnt", &e.item_id))
                .key(self.key("event", id.unwrap_or("")));
            call.arg(*offset)
                .arg(if id.is_some() { "1" } else { "0" })
                .arg(e.kind.name())
                .arg(if e.kind.is_positive() { "1" } else { "0" })
                .arg(&e.item_id)
                .arg(entry);
        }
        let (applied, duplicates): (u64, u64) = call.invoke_async(&mut self.conn.clone()).await?;
        Ok(Applied { applied, duplicates })
    }

    fn add_user(&self, pipe: &mut redis::Pipeline, id: &str, user: &UserState) -> Result<(), StoreError> {
        let (demo, hist, sess, cnt) =
            (self.key("user:demo", id), self.key("user:hist", id), self.key("user:sess", id), self.key("user:cnt", id));
        pipe.del(&[&demo, &hist, &sess, &cnt]).ignore();
        let d = &user.demographics;
        let age = d.age.map(|a| a.to_string()).unwrap_or_default();
        pipe.hset_multiple(
            &demo,
            &[("age", age.as_str()), ("gender", &d.gender), ("occupation", &d.occupation), ("zip", &d.zip)],
        )
        .ignore();
        let skip = user.history.len().saturating_sub(self.limits.history_len);
        let history: Vec<&String> = user.history.iter().skip(skip).collect();
        if !history.is_empty() {
            pipe.rpush(&hist, history).ignore();
        }
        let skip = user.session.len().saturating_sub(self.limits.session_len);
        let session =
            user.session.iter().skip(skip).map(serde_json::to_string).collect::<Result<Vec<_>, _>>().map_err(|e| {
                StoreError::Malformed { key: sess.clone(), reason: format!("cannot encode session: {e}") }
            })?;
        if !session.is_empty() {
            pipe.rpush(&sess, session).ignore();
        }
        let counters: Vec<(&String, u64)> = user.counters.iter().map(|(k, v)| (k, *v)).collect();
        if !counters.is_empty() {
            pipe.hset_multiple(&cnt, &counters).ignore();
        }
        let (session_ttl, state_ttl) = self.ttls();
        pipe.expire(&sess, session_ttl).ignore();
        for key in [&demo, &hist, &cnt] {
            pipe.expire(key, state_ttl).ignore();
        }
        pipe.set(self.populated_key(), 1).ignore();
        Ok(())
    }
}

fn to_counters(key: &str, raw: HashMap<String, String>) -> Result<Counters, StoreError> {
    raw.into_iter()
        .map(|(k, v)| match v.parse::<u64>() {
            Ok(n) => Ok((k, n)),
            Err(_) => Err(StoreError::Malformed { key: key.to_owned(), reason: format!("counter {k} is {v:?}") }),
        })
        .collect()
}

#[async_trait]
impl FeatureStore for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    async fn get_user(&self, user_id: &str) -> Result<Option<UserState>, StoreError> {
        let (demo_key, hist, sess_key, cnt_key) = (
            self.key("user:demo", user_id),
            self.key("user:hist", user_id),
            self.key("user:sess", user_id),
            self.key("user:cnt", user_id),
        );
        type Reply = (HashMap<String, String>, Vec<String>, Vec<String>, HashMap<String, String>);
        let (mut demo, history, session, counters): Reply = redis::pipe()
            .atomic()
            .hgetall(&demo_key)
            .lrange(&hist, 0, -1)
            .lrange(&sess_key, 0, -1)
            .hgetall(&cnt_key)
            .query_async(&mut self.conn.clone())
            .await?;
        if demo.is_empty() && history.is_empty() && session.is_empty() && counters.is_empty() {
            return Ok(None);
        }
        let age = match demo.remove("age").filter(|a| !a.is_empty()) {
            None => None,
            Some(a) => Some(
                a.parse::<u32>()
                    .map_err(|_| StoreError::Malformed { key: demo_key.clone(), reason: format!("age is {a:?}") })?,
            ),
        };
        let mut field = |name: &str| demo.remove(name).unwrap_or_default();
        let demographics =
            Demographics { age, gender: field("gender"), occupation: field("occupation"), zip: field("zip") };
        let session = session
            .iter()
            .map(|s| serde_json::from_str::<SessionEntry>(s))
            .collect::<Result<_, _>>()
            .map_err(|e| StoreError::Malformed { key: sess_key.clone(), reason: e.to_string() })?;
        Ok(Some(UserState {
            demographics,
            history: history.into(),
            session,
            counters: to_counters(&cnt_key, counters)?,
        }))
    }

    async fn get_item_counters(&self, item_ids: &[String]) -> Result<Vec<Counters>, StoreError> {
        if item_ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = item_ids.iter().map(|id| self.key("item:cnt", id)).collect();
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.hgetall(k);
        }
        let raw: Vec<HashMap<String, String>> = pipe.query_async(&mut self.conn.clone()).await?;
        keys.iter().zip(raw).map(|(k, r)| to_counters(k, r)).collect()
    }

    async fn apply(&self, events: &[FeatureEvent]) -> Result<(), StoreError> {
        let records: Vec<LoggedRecord<'_>> =
            events.iter().map(|event| LoggedRecord { offset: 0, event, id: None }).collect();
        self.run_apply(None, &records).await.map(|_| ())
    }

    async fn is_empty(&self) -> Result<bool, StoreError> {
        let populated: bool =
            redis::cmd("EXISTS").arg(self.populated_key()).query_async(&mut self.conn.clone()).await?;
        Ok(!populated)
    }

    async fn put_users(&self, users: BTreeMap<String, UserState>) -> Result<(), StoreError> {
        let users: Vec<(String, UserState)> = users.into_iter().collect();
        for chunk in users.chunks(PUT_CHUNK) {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for (id, user) in chunk {
                self.add_user(&mut pipe, id, user)?;
            }
            pipe.query_async::<()>(&mut self.conn.clone()).await?;
        }
        Ok(())
    }
}
