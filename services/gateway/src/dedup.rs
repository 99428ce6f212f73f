//! Each event counts once: the first (request, item, event type) is forwarded and counted, a
//! replay or a retry of it is accepted but neither forwarded nor counted again.
//!
//! The embedded default remembers events in memory, in a cache of `--dedup-capacity` entries
//! that live as long as a token does. It is bounded: when it is full an entry can be evicted (or
//! a new one not admitted) before its token expires, and that event can then be counted again;
//! such evictions are counted in `reco_dedup_evictions_total`. It is also per replica: a replay
//! sent to another replica is counted there. `--dedup-redis-url` shares one Redis between every
//! replica instead (`SET key 1 NX EX ttl`, so Redis bounds and expires the state). When Redis
//! does not answer the event is refused with a 503, never counted twice and never dropped
//! silently: the client retries.

use std::time::Duration;

use moka::future::Cache;
use moka::notification::RemovalCause;
use reco_core::token::MAX_CLOCK_SKEW;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::args::Settings;
use crate::error::GatewayError;
use crate::metrics::{Metrics, PipelineLabels};

/// Whether an event was seen before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// First time: forward and count it.
    New,
    /// Already recorded: accept it again without forwarding or counting.
    Duplicate,
}

/// The shared store could not say whether an event is new.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DedupUnavailable(String);

/// The events already recorded, by [`reco_proto::event_key`].
pub enum Dedup {
    Memory(Cache<u128, ()>),
    Redis(RedisDedup),
}

pub struct RedisDedup {
    conn: ConnectionManager,
    /// `reco:{pipeline}:dedup:`, beside the feature store's keys of the pipeline.
    prefix: String,
    ttl_secs: u64,
    timeout: Duration,
}

impl Dedup {
    /// In memory, or on the Redis at `redis_url` (connected on first use, so a Redis that is not
    /// up yet does not stop the gateway: events get 503 until it is). Entries live as long as the
    /// tokens they come with: `--token-max-age-seconds` plus the clock skew a token may have.
    pub fn new(redis_url: Option<&str>, settings: &Settings, metrics: &Metrics) -> Result<Self, GatewayError> {
        let ttl = settings.token_max_age + MAX_CLOCK_SKEW;
        let Some(url) = redis_url else {
            let evictions =
                metrics.dedup_evictions.get_or_create(&PipelineLabels { pipeline: settings.pipeline.clone() }).clone();
            let cache = Cache::builder()
                .max_capacity(settings.dedup_capacity)
                .time_to_live(ttl)
                .eviction_listener(move |_, (), cause| {
                    if cause == RemovalCause::Size {
                        evictions.inc();
                    }
                })
                .build();
            return Ok(Self::Memory(cache));
        };
        let flag = |error: redis::RedisError| GatewayError::Flag(format!("--dedup-redis-url: {error}"));
        let timeout = settings.events_timeout;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let conn =
            redis::Client::open(url).and_then(|client| client.get_connection_manager_lazy(config)).map_err(flag)?;
        Ok(Self::Redis(RedisDedup {
            conn,
            prefix: format!("reco:{}:dedup:", settings.pipeline),
            ttl_secs: ttl.as_secs(),
            timeout,
        }))
    }

    /// Marks `key` as recorded; says whether it already was.
    pub async fn claim(&self, key: u128) -> Result<Claim, DedupUnavailable> {
        let fresh = match self {
            Self::Memory(cache) => cache.entry(key).or_insert(()).await.is_fresh(),
            Self::Redis(store) => {
                let mut set = redis::cmd("SET");
                set.arg(store.key(key)).arg(1).arg("NX").arg("EX").arg(store.ttl_secs);
                let reply: Option<String> = store.run(&set).await?;
                reply.is_some()
            }
        };
        Ok(if fresh { Claim::New } else { Claim::Duplicate })
    }

    /// Forgets `key` after a [`Claim::New`] whose event could not be recorded, so that the
    /// client's retry counts. If Redis fails here too, the retry is taken for a duplicate until
    /// the entry expires; that is logged.
    pub async fn release(&self, key: u128) {
        match self {
            Self::Memory(cache) => cache.invalidate(&key).await,
            Self::Redis(store) => {
                let mut del = redis::cmd("DEL");
                del.arg(store.key(key));
                if let Err(error) = store.run::<i64>(&del).await {
                    tracing::warn!(%error, "cannot release a deduplication entry: a retry of that event will be ignored");
                }
            }
        }
    }
}

impl RedisDedup {
    fn key(&self, key: u128) -> String {
        format!("{}{key:032x}", self.prefix)
    }

    async fn run<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, DedupUnavailable> {
        let mut conn = self.conn.clone();
        tokio::time::timeout(self.timeout, command.query_async(&mut conn))
            .await
            .map_err(|_| DedupUnavailable(format!("Redis did not answer within {:?}", self.timeout)))?
            .map_err(|error| DedupUnavailable(format!("Redis: {error}")))
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;
    use reco_proto::{EventType, event_key};

    use super::*;

    fn settings(flags: &[&str]) -> Settings {
        let args = [&["gateway", "--pipeline=p"], flags].concat();
        crate::args::parse_flags(&args).expect("flags").settings().expect("valid")
    }

    #[tokio::test]
    async fn memory_counts_once_and_a_release_lets_a_retry_count() {
        let metrics = Metrics::register(&mut Registry::default());
        let dedup = Dedup::new(None, &settings(&[]), &metrics).expect("memory");
        let key = event_key("r", "i", EventType::Click);
        assert_eq!(dedup.claim(key).await.expect("memory"), Claim::New);
        assert_eq!(dedup.claim(key).await.expect("memory"), Claim::Duplicate);
        dedup.release(key).await;
        assert_eq!(dedup.claim(key).await.expect("memory"), Claim::New);
    }

    #[tokio::test]
    async fn memory_is_bounded_and_counts_evictions() {
        let metrics = Metrics::register(&mut Registry::default());
        let dedup = Dedup::new(None, &settings(&["--dedup-capacity=10"]), &metrics).expect("memory");
        for i in 0..100 {
            assert_eq!(
                dedup.claim(event_key("r", &i.to_string(), EventType::Click)).await.expect("memory"),
                Claim::New
            );
        }
        let Dedup::Memory(cache) = &dedup else { panic!("memory store expected") };
        cache.run_pending_tasks().await;
        assert!(cache.entry_count() <= 10, "{} entries", cache.entry_count());
        let evictions = metrics.dedup_evictions.get_or_create(&PipelineLabels { pipeline: "p".into() }).get();
        assert!(evictions >= 90, "{evictions} evictions counted");
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_unavailable_not_new() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let metrics = Metrics::register(&mut Registry::default());
        let url = format!("redis://127.0.0.1:{port}");
        let dedup = Dedup::new(Some(&url), &settings(&["--events-timeout-ms=500"]), &metrics).expect("lazy");
        let error = dedup.claim(event_key("r", "i", EventType::Click)).await.expect_err("nothing listens");
        assert!(error.to_string().starts_with("Redis"), "{error}");
        let error = Dedup::new(Some("http://not-redis"), &settings(&[]), &metrics).err().expect("bad URL");
        assert!(error.to_string().contains("--dedup-redis-url"), "{error}");
    }
}
