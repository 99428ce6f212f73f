//! The scrape source: reads the gateways' metrics endpoints itself, so a
//! cluster without Prometheus can still roll out on live CTR (the embedded
//! default).
//!
//! Each look ([`MetricSource::window`]) scrapes every target, records what it
//! read, and answers from the history it keeps per target and series:
//! counts are the reset-aware increase since `start` (positive deltas
//! summed, a drop counted as a restart from 0, like Prometheus'
//! `increase()`, without its extrapolation), summed over all targets and
//! filtered by the labels `pipeline` and `model_version`, per user group for
//! impressions and clicks; the latency histogram is the bucket increases.
//! The window ends at this look's scrape (the query's `now` is the moment
//! of the call). The pre-rollout counts for CUPED cover what the history
//! holds of `before` (at most [`RETENTION`]; from the first scrape after a
//! restart of the source). It scrapes only the pipeline's own gateways, so
//! needs no namespace or job label.
//!
//! What it cannot know, and how it says so:
//! - **The source itself restarted** (or a target is new to it): what a
//!   gateway counted before its first scrape is unknown, so for that gateway
//!   the window starts at its first scrape; the first look after a restart
//!   reads zeros and the counts grow from there. Call [`ScrapeSource::scrape`]
//!   periodically (every few seconds) from startup so the history starts
//!   early and a gateway restart between two looks loses at most what it
//!   counted since the last scrape.
//! - **A target is unreachable** (or answers an error or garbage): the look
//!   fails with [`SourceError::Scrape`] naming every failed target, and the
//!   caller reports the look Inconclusive. Its traffic is never counted as
//!   zero; the targets that answered are still recorded.
//! - **A target is removed** ([`ScrapeSource::set_targets`], a gateway pod
//!   gone): it is no longer scraped, but what it counted until its last
//!   scrape still counts in windows covering it, for [`RETENTION`].
//!
//! This module owns the I/O and the shared state; parsing is in
//! `exposition`, the history and the arithmetic in `history`.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use jiff::Timestamp;
use reco_rollout::WindowMetrics;
use reqwest::Url;
use reqwest::header::{ACCEPT, HeaderValue};

use crate::error::ScrapeError;
pub use crate::history::RETENTION;
use crate::history::{self, SeriesKey, TargetHistory};
use crate::{MetricSource, SourceError, WindowQuery, exposition};

/// Largest exposition read from one gateway.
const MAX_EXPOSITION_BYTES: usize = 32 << 20;

/// The formats the parser reads, OpenMetrics first (what `prometheus-client`
/// writes).
const ACCEPT_EXPOSITION: &str = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";

/// Reads windows by scraping the gateways' metrics endpoints.
#[derive(Debug)]
pub struct ScrapeSource {
    client: reqwest::Client,
    timeout: Duration,
    /// The endpoints scraped on each look; replaced as gateways come and go.
    targets: Mutex<Vec<Url>>,
    /// History per target, including removed targets still within
    /// [`RETENTION`]. The async lock is held across a whole scrape so
    /// concurrent looks record scrapes in order.
    histories: tokio::sync::Mutex<HashMap<Url, TargetHistory>>,
}

impl ScrapeSource {
    /// A source scraping `targets`: each is the full URL of a gateway's
    /// exposition endpoint, e.g. `http://10.1.2.3:9090/metrics`.
    pub fn new(targets: Vec<Url>) -> Result<Self, SourceError> {
        Ok(ScrapeSource {
            client: crate::http_client()?,
            timeout: crate::DEFAULT_TIMEOUT,
            targets: Mutex::new(dedup(targets)),
            histories: tokio::sync::Mutex::default(),
        })
    }

    /// Sets how long one scrape may take before it counts as failed.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Replaces the targets (the controller discovered the gateway pods).
    /// History of targets kept is kept; removed ones still count in windows
    /// covering their past, and new ones start at their first scrape.
    pub fn set_targets(&self, targets: Vec<Url>) {
        *self.targets.lock().unwrap_or_else(PoisonError::into_inner) = dedup(targets);
    }

    /// The targets scraped on each look.
    pub fn targets(&self) -> Vec<Url> {
        self.targets.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Scrapes every target now and records what it read. Every look does
    /// this; calling it periodically in between gives finer history (see the
    /// module docs). Fails, naming them, if any target failed.
    pub async fn scrape(&self) -> Result<(), SourceError> {
        let mut histories = self.histories.lock().await;
        self.scrape_into(&mut histories).await
    }

    async fn read(&self, q: &WindowQuery) -> Result<WindowMetrics, SourceError> {
        q.check()?;
        let mut histories = self.histories.lock().await;
        // Before this look's scrape, which may thin: the step's base point must stay.
        let pins = [Some(q.start), q.before.map(|(from, _)| from), q.before.map(|(_, to)| to)];
        for history in histories.values_mut() {
            pins.iter().flatten().for_each(|&pin| history.pin(pin));
        }
        self.scrape_into(&mut histories).await?;
        let increases: Vec<(&SeriesKey, f64)> =
            histories.values().flat_map(|history| history.increases(q.start)).collect();
        let [stable, candidate] =
            q.sides().map(|side| history::side_metrics(increases.iter().copied(), &q.pipeline, &side));
        let before = match q.before {
            Some((from, to)) => history::group_counts(
                histories.values().flat_map(|history| history.increases_between(from, to)),
                &q.pipeline,
            ),
            None => Default::default(),
        };
        Ok(WindowMetrics { stable, candidate, before })
    }

    async fn scrape_into(&self, histories: &mut HashMap<Url, TargetHistory>) -> Result<(), SourceError> {
        let targets = self.targets();
        if targets.is_empty() {
            return Err(SourceError::NoTargets);
        }
        let results = futures::future::join_all(targets.iter().map(|target| self.fetch(target))).await;
        let mut failures = Vec::new();
        let mut latest = None;
        for (target, result) in targets.iter().zip(results) {
            match result {
                Ok((at, scraped)) => {
                    tracing::debug!(%target, series = scraped.len(), "scraped gateway");
                    latest = latest.max(Some(at));
                    histories.entry(target.clone()).or_default().record(at, scraped);
                }
                Err(failure) => failures.push(failure),
            }
        }
        // Forget removed targets once no window can reach back to them.
        if let Some(now) = latest {
            histories.retain(|target, history| {
                targets.contains(target)
                    || history.last_scrape().is_some_and(|last| now.duration_since(last) < RETENTION)
            });
        }
        if failures.is_empty() { Ok(()) } else { Err(SourceError::Scrape { total: targets.len(), failures }) }
    }

    /// Scrapes one target: the time of the request and its series.
    async fn fetch(&self, target: &Url) -> Result<(Timestamp, HashMap<SeriesKey, f64>), ScrapeError> {
        let request_failed = |reason: String| ScrapeError::Request { target: target.clone(), reason };
        let at = Timestamp::now();
        let response = self
            .client
            .get(target.clone())
            .header(ACCEPT, HeaderValue::from_static(ACCEPT_EXPOSITION))
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| request_failed(crate::error::chain(&e.without_url())))?;
        let status = response.status();
        if !status.is_success() {
            return Err(ScrapeError::Http { target: target.clone(), status: status.as_u16() });
        }
        let body = crate::read_body(response, MAX_EXPOSITION_BYTES).await.map_err(request_failed)?;
        let malformed = |error: exposition::ParseError| ScrapeError::Malformed {
            target: target.clone(),
            line: error.line,
            reason: error.reason,
        };
        let text = std::str::from_utf8(&body).map_err(|e| {
            let line = body[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
            malformed(exposition::ParseError { line, reason: "not UTF-8".into() })
        })?;
        let samples = exposition::parse(text, history::is_read).map_err(malformed)?;
        let scraped = history::snapshot(samples).map_err(malformed)?;
        Ok((at, scraped))
    }
}

impl MetricSource for ScrapeSource {
    fn window<'a>(&'a self, q: &'a WindowQuery) -> BoxFuture<'a, Result<WindowMetrics, SourceError>> {
        Box::pin(self.read(q))
    }
}

/// Targets in order, each once: a target listed twice would count twice.
fn dedup(targets: Vec<Url>) -> Vec<Url> {
    let mut unique = Vec::with_capacity(targets.len());
    for target in targets {
        if !unique.contains(&target) {
            unique.push(target);
        }
    }
    unique
}
