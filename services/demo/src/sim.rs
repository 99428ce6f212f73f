//! The replay simulator: live traffic through the gateway's real HTTP API.
//!
//! Open loop: request `i` is sent at `i / rate` seconds whatever the answers
//! before it did, unless `concurrency` requests are already in flight, in
//! which case it is shed (counted, not sent). Each request asks
//! `POST /v1/recommend` for a user and clicks (`POST /v1/events`, with the
//! answer's token) every item that is in the user's held-out future, plus
//! any other item with probability `noise`. The user and the noise clicks
//! of request `i` come from a generator seeded with `(seed, i)`, so the
//! choices are the same from run to run whatever the scheduling.
//!
//! Every request and its outcome is counted by the version that answered
//! (`model_version`); a transport error or a non-2xx answer is a failure
//! (counted under [`UNKNOWN_VERSION`] when no answer names a version).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::replay::{ReplayData, ReplayUser};

/// Where failures without a serving version are counted.
pub const UNKNOWN_VERSION: &str = "unknown";

/// How long one HTTP request may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The simulator's knobs.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Base URL of the gateway, e.g. `http://127.0.0.1:8080/`.
    pub base: Url,
    /// Recommend requests started per second.
    pub rate: f64,
    /// Most requests in flight at once; arrivals beyond it are shed.
    pub concurrency: usize,
    pub seed: u64,
    /// Probability that an item outside the user's future is clicked anyway.
    pub noise: f64,
    /// Items asked for per request (1..=100).
    pub page_size: u32,
    /// The `context` object sent with every request.
    pub context: serde_json::Value,
    /// Times a request is sent again after a transport error or a 5xx, as a
    /// client of a replicated service does (0: never).
    pub retries: u32,
}

/// Why a simulation cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("--rate must be a positive number of requests per second, got {0}")]
    Rate(f64),
    #[error("--concurrency must be at least 1")]
    Concurrency,
    #[error("--noise must be a probability in [0, 1], got {0}")]
    Noise(f64),
    #[error("--page-size must be between 1 and 100, got {0}")]
    PageSize(u32),
    #[error("no users to replay")]
    NoUsers,
    #[error("building the HTTP client: {0}")]
    Client(String),
}

impl SimConfig {
    /// Rejects values the simulator cannot run with.
    pub fn validate(&self) -> Result<(), SimError> {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(SimError::Rate(self.rate));
        }
        if self.concurrency == 0 {
            return Err(SimError::Concurrency);
        }
        if !(0.0..=1.0).contains(&self.noise) {
            return Err(SimError::Noise(self.noise));
        }
        if !(1..=100).contains(&self.page_size) {
            return Err(SimError::PageSize(self.page_size));
        }
        Ok(())
    }
}

/// What one version did, as the simulated users saw it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionCounts {
    /// Recommend requests answered (or failed) by this version.
    pub requests: u64,
    /// Recommend requests that failed (transport error or non-2xx).
    pub failed: u64,
    /// Answers flagged `degraded` by the gateway.
    pub degraded: u64,
    /// Items shown, once per page (a cached page served again is not new).
    pub impressions: u64,
    /// Click events the gateway counted (not those it answered as duplicates).
    pub clicks: u64,
    /// Click events the gateway did not accept (transport error or non-2xx).
    pub events_failed: u64,
    /// Requests (recommend or click) that succeeded only when sent again.
    pub retried: u64,
}

impl VersionCounts {
    pub fn ctr(&self) -> f64 {
        if self.impressions == 0 { 0.0 } else { self.clicks as f64 / self.impressions as f64 }
    }

    fn add(&mut self, other: &VersionCounts) {
        self.requests += other.requests;
        self.failed += other.failed;
        self.retried += other.retried;
        self.degraded += other.degraded;
        self.impressions += other.impressions;
        self.clicks += other.clicks;
        self.events_failed += other.events_failed;
    }
}

/// Counts so far, per version, plus the requests shed at the in-flight cap.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SimStats {
    pub versions: BTreeMap<String, VersionCounts>,
    pub shed: u64,
}

impl SimStats {
    /// All versions together.
    pub fn total(&self) -> VersionCounts {
        let mut total = VersionCounts::default();
        for counts in self.versions.values() {
            total.add(counts);
        }
        total
    }

    pub fn version(&self, name: &str) -> VersionCounts {
        self.versions.get(name).copied().unwrap_or_default()
    }
}

/// A running simulation; stops when dropped or on [`Simulator::stop`].
pub struct Simulator {
    stats: Arc<Mutex<SimStats>>,
    stop: Arc<AtomicBool>,
    driver: Option<JoinHandle<()>>,
}

/// The answer of `POST /v1/recommend`, the fields the simulator reads.
#[derive(Debug, Deserialize)]
struct RecommendAnswer {
    request_id: String,
    model_version: String,
    token: String,
    items: Vec<AnsweredItem>,
    #[serde(default)]
    degraded: bool,
}

#[derive(Debug, Deserialize)]
struct AnsweredItem {
    item_id: String,
}

/// The answer of `POST /v1/events`: a duplicate (the same click on the same
/// page again) is accepted but not counted by the gateway, nor here.
#[derive(Debug, Deserialize)]
struct EventAnswer {
    #[serde(default)]
    duplicate: bool,
}

/// What request `i` does given the seed: which user, and a generator for its
/// noise clicks. Pure.
pub fn request_plan(seed: u64, index: u64, users: usize) -> (usize, StdRng) {
    let mixed = xxhash_rust::xxh3::xxh3_64_with_seed(&index.to_le_bytes(), seed);
    let mut rng = StdRng::seed_from_u64(mixed);
    let user = if users == 0 { 0 } else { rng.random_range(0..users) };
    (user, rng)
}

/// The items of an answer that the user clicks. Pure.
pub fn clicked<'a>(user: &ReplayUser, items: &'a [String], noise: f64, rng: &mut StdRng) -> Vec<&'a str> {
    items
        .iter()
        .filter(|item| {
            // Draw for every item so the noise stream does not depend on which items hit.
            let noisy = noise > 0.0 && rng.random_bool(noise.min(1.0));
            user.future.contains(item.as_str()) || noisy
        })
        .map(String::as_str)
        .collect()
}

impl Simulator {
    /// Starts sending traffic at once.
    pub fn start(config: SimConfig, data: Arc<ReplayData>) -> Result<Self, SimError> {
        config.validate()?;
        if data.users.is_empty() {
            return Err(SimError::NoUsers);
        }
        let client = http_client()?;
        let stats = Arc::new(Mutex::new(SimStats::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let driver = tokio::spawn(drive(config, data, client, Arc::clone(&stats), Arc::clone(&stop)));
        Ok(Simulator { stats, stop, driver: Some(driver) })
    }

    /// The counts so far.
    pub fn stats(&self) -> SimStats {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Stops sending, waits for the requests in flight and returns the counts.
    pub async fn stop(mut self) -> SimStats {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(driver) = self.driver.take() {
            let _ = driver.await;
        }
        self.stats()
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(driver) = self.driver.take() {
            driver.abort();
        }
    }
}

/// Builds the reqwest client (the workspace's reqwest needs a rustls provider).
pub fn http_client() -> Result<reqwest::Client, SimError> {
    reco_runtime::tls::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(256)
        .build()
        .map_err(|e| SimError::Client(e.to_string()))
}

async fn drive(
    config: SimConfig,
    data: Arc<ReplayData>,
    client: reqwest::Client,
    stats: Arc<Mutex<SimStats>>,
    stop: Arc<AtomicBool>,
) {
    let config = Arc::new(config);
    let permits = Arc::new(Semaphore::new(config.concurrency));
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / config.rate);
    let mut in_flight = Vec::new();
    let mut index: u64 = 0;
    // Pages already counted: the gateway re-serves a cached page (same
    // request id) without counting its impressions again, and so do we.
    let pages = Arc::new(Mutex::new(HashSet::<String>::new()));
    while !stop.load(Ordering::SeqCst) {
        let due = start + period.mul_f64(index as f64);
        tokio::time::sleep_until(due.into()).await;
        match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => {
                let (config, data, client, stats, pages) =
                    (Arc::clone(&config), Arc::clone(&data), client.clone(), Arc::clone(&stats), Arc::clone(&pages));
                in_flight.push(tokio::spawn(async move {
                    let (version, mut counts, page) = one_request(&config, &data, &client, index).await;
                    let new_page =
                        page.is_some_and(|id| pages.lock().unwrap_or_else(PoisonError::into_inner).insert(id));
                    if !new_page {
                        counts.impressions = 0;
                    }
                    let mut stats = stats.lock().unwrap_or_else(PoisonError::into_inner);
                    stats.versions.entry(version).or_default().add(&counts);
                    drop(permit);
                }));
            }
            Err(_) => stats.lock().unwrap_or_else(PoisonError::into_inner).shed += 1,
        }
        index += 1;
        if in_flight.len() >= 1024 {
            in_flight.retain(|task: &JoinHandle<()>| !task.is_finished());
        }
    }
    for task in in_flight {
        let _ = task.await;
    }
}

/// Request `index`: recommend, then the clicks. Returns the answering
/// version, what happened (impressions counted whether or not the page is
/// new) and the page's request id.
async fn one_request(
    config: &SimConfig,
    data: &ReplayData,
    client: &reqwest::Client,
    index: u64,
) -> (String, VersionCounts, Option<String>) {
    let (user_index, mut rng) = request_plan(config.seed, index, data.users.len());
    let failed = || (UNKNOWN_VERSION.to_owned(), VersionCounts { requests: 1, failed: 1, ..Default::default() }, None);
    let Some(user) = data.users.get(user_index) else { return failed() };
    let Ok(url) = config.base.join("v1/recommend") else { return failed() };
    let body = serde_json::json!({"user_id": user.id, "page_size": config.page_size, "context": config.context});
    let (sent, mut retried) = send_with_retries(client, url, &body, config.retries).await;
    let Some(response) = sent else { return failed() };
    let Ok(answer) = response.json::<RecommendAnswer>().await else { return failed() };
    let items: Vec<String> = answer.items.into_iter().map(|item| item.item_id).collect();
    let Ok(events) = config.base.join("v1/events") else { return failed() };
    let (mut clicks, mut events_failed) = (0, 0);
    for item in clicked(user, &items, config.noise, &mut rng) {
        let event = serde_json::json!({"token": answer.token, "user_id": user.id, "item_id": item, "type": "click"});
        let (sent, again) = send_with_retries(client, events.clone(), &event, config.retries).await;
        retried += again;
        match sent.map(|response| response.json::<EventAnswer>()) {
            Some(answer) => match answer.await {
                Ok(EventAnswer { duplicate: false }) => clicks += 1,
                Ok(EventAnswer { duplicate: true }) => {}
                Err(_) => events_failed += 1,
            },
            None => events_failed += 1,
        }
    }
    let counts = VersionCounts {
        requests: 1,
        degraded: u64::from(answer.degraded),
        impressions: items.len() as u64,
        clicks,
        events_failed,
        retried,
        ..Default::default()
    };
    (answer.model_version, counts, Some(answer.request_id))
}

/// Posts `body` to `url`, sending it again up to `retries` times after a
/// transport error or a 5xx; the successful answer (2xx) if any, and
/// whether it took a retry (0 or 1).
async fn send_with_retries(
    client: &reqwest::Client,
    url: Url,
    body: &serde_json::Value,
    retries: u32,
) -> (Option<reqwest::Response>, u64) {
    for attempt in 0..=retries {
        match client.post(url.clone()).json(body).send().await {
            Ok(response) if response.status().is_success() => return (Some(response), u64::from(attempt > 0)),
            Ok(response) if !response.status().is_server_error() => {
                tracing::debug!(%url, status = %response.status(), "refused");
                return (None, 0);
            }
            Ok(response) => tracing::debug!(%url, status = %response.status(), attempt, "failed"),
            Err(e) => tracing::debug!(%url, error = %e, attempt, "failed"),
        }
    }
    (None, 0)
}

#[cfg(test)]
mod tests;
