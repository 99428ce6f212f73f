//! The Prometheus source: reads a window with PromQL instant queries
//! (`GET <base>/api/v1/query?query=…&time=<now>`).
//!
//! For a window `[start, now]` of pipeline `P` in namespace `N`, every query is evaluated at
//! `now` over a range `R` = `now − start` rounded up to whole seconds, and at
//! least the source's minimum range (default 2 minutes,
//! [`DEFAULT_MIN_RANGE`]): `increase()` needs two samples inside its range,
//! so the minimum must be at least one scrape interval, better two. For a
//! side served by version `V`:
//!
//! ```promql
//! sum by (user_group) (increase(reco_impressions_total{pipeline="P",namespace="N",model_version="V"}[Rs]))
//! sum by (user_group) (increase(reco_clicks_total{pipeline="P",namespace="N",model_version="V"}[Rs]))
//! sum(increase(reco_recommend_requests_total{pipeline="P",namespace="N",model_version="V"}[Rs]))
//! sum(increase(reco_recommend_errors_total{pipeline="P",namespace="N",model_version="V"}[Rs]))
//! sum by (le) (increase(reco_recommend_duration_seconds_bucket{pipeline="P",namespace="N",model_version="V"}[Rs]))
//! ```
//!
//! With a job set ([`PrometheusSource::with_job`]) every selector also has
//! `job="J"`. For CUPED, the counts per user group of every version over
//! the pre-rollout window `[from, to]` (the `@` modifier, Prometheus ≥ 2.33):
//!
//! ```promql
//! sum by (user_group) (increase(reco_impressions_total{pipeline="P",namespace="N"}[Fs] @ to))
//! ```
//!
//! A shadow candidate `S` (only mirrored traffic) has no impressions or
//! clicks; its side reads:
//!
//! ```promql
//! sum(increase(reco_shadow_requests_total{pipeline="P",namespace="N",model_version="S"}[Rs]))
//! sum(increase(reco_shadow_errors_total{pipeline="P",namespace="N",model_version="S"}[Rs]))
//! sum by (le) (increase(reco_shadow_duration_seconds_bucket{pipeline="P",namespace="N",model_version="S"}[Rs]))
//! ```
//!
//! `P` and `V` are written as escaped PromQL strings, so any name is matched
//! literally. Reading the answers: counts are rounded to whole numbers;
//! an empty vector is 0 (no series yet: no traffic); the p99 is computed from
//! the buckets like `histogram_quantile` ([`reco_rollout::p99_from_histogram`]). A failed request, a
//! timeout ([`crate::DEFAULT_TIMEOUT`] unless set), a non-2xx answer, a
//! `status: error` answer or a malformed one fails the whole window with an
//! error naming the query.
//!
//! Counts are Prometheus' estimates, not exact: `increase()` only sees the
//! deltas between samples inside its range and extrapolates them to the
//! range's edges. So it answers fractions, and near each edge of the window
//! it can be off by up to one scrape interval's worth of traffic: traffic
//! between the window's start and the first scrape inside it is only
//! estimated, from the rate after that scrape (a burst there is lost). A
//! window covering a series from its first sample (at 0) to its last is
//! exact. For steady traffic over windows of many scrape intervals the
//! error is small; the scrape source has no extrapolation but the same
//! one-scrape resolution at the window's start.
//!
//! This module owns the I/O; building the queries and reading the answers is
//! pure and lives in `promql` ([`crate::window_queries`]).

use std::time::Duration;

use futures::future::BoxFuture;
use std::collections::BTreeMap;

use reco_rollout::{Groups, SideMetrics, WindowMetrics};
use reqwest::Url;

use crate::error::QueryFailure;
use crate::promql::{self, BeforeQueries, SideQueries};
use crate::{MetricSource, SourceError, WindowQuery};

/// Default floor of the query range: twice Prometheus' default 1 minute
/// scrape interval, so `increase()` sees two samples even in a brand-new window.
pub const DEFAULT_MIN_RANGE: Duration = Duration::from_secs(120);

/// Largest API answer read; ours are one sample, so anything near this is broken.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Reads windows from a Prometheus server that scrapes the gateways.
#[derive(Clone, Debug)]
pub struct PrometheusSource {
    client: reqwest::Client,
    query_url: Url,
    min_range: Duration,
    timeout: Duration,
    /// The `job` label of the gateways' scrape job, when queries are scoped to it.
    job: Option<String>,
}

impl PrometheusSource {
    /// A source querying the Prometheus at `base_url` (e.g.
    /// `http://prometheus.monitoring:9090`, or with a path prefix when it is
    /// served under one).
    pub fn new(base_url: Url) -> Result<Self, SourceError> {
        Ok(PrometheusSource {
            client: crate::http_client()?,
            query_url: query_url(base_url),
            min_range: DEFAULT_MIN_RANGE,
            timeout: crate::DEFAULT_TIMEOUT,
            job: None,
        })
    }

    /// Sets the floor of the query range; use at least the scrape interval of
    /// the gateways' job (two intervals is safer).
    pub fn with_min_range(mut self, min_range: Duration) -> Self {
        self.min_range = min_range;
        self
    }

    /// Scopes every query to the scrape job `job` (the `job` label of the
    /// gateways' targets), so that another job scraping the same pods (or
    /// exporting the same series) is never counted twice.
    pub fn with_job(mut self, job: impl Into<String>) -> Self {
        self.job = Some(job.into());
        self
    }

    /// Sets how long one query may take before the window fails.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn read(&self, q: &WindowQuery) -> Result<WindowMetrics, SourceError> {
        q.check()?;
        let queries = promql::window_queries(q, self.min_range, self.job.as_deref());
        let (stable, candidate, before) = futures::try_join!(
            self.side(&queries.stable, &queries.time),
            self.side(&queries.candidate, &queries.time),
            self.before(queries.before.as_ref(), &queries.time),
        )?;
        Ok(WindowMetrics { stable, candidate, before })
    }

    async fn side(&self, queries: &SideQueries, time: &str) -> Result<SideMetrics, SourceError> {
        let (impressions, clicks, requests, errors, (latency, latency_count)) = futures::try_join!(
            self.optional_groups(queries.impressions.as_deref(), time),
            self.optional_groups(queries.clicks.as_deref(), time),
            self.count(&queries.requests, time),
            self.count(&queries.errors, time),
            self.histogram(&queries.latency, time),
        )?;
        Ok(SideMetrics {
            impressions: impressions.values().sum(),
            clicks: clicks.values().sum(),
            requests,
            errors,
            latency,
            latency_count,
            groups: promql::zip_groups(&impressions, &clicks),
        })
    }

    async fn before(&self, queries: Option<&BeforeQueries>, time: &str) -> Result<Groups, SourceError> {
        let Some(queries) = queries else { return Ok(Groups::new()) };
        let (impressions, clicks) =
            futures::try_join!(self.groups(&queries.impressions, time), self.groups(&queries.clicks, time))?;
        Ok(promql::zip_groups(&impressions, &clicks))
    }

    async fn optional_groups(&self, query: Option<&str>, time: &str) -> Result<BTreeMap<u16, u64>, SourceError> {
        match query {
            Some(query) => self.groups(query, time).await,
            None => Ok(BTreeMap::new()),
        }
    }

    async fn groups(&self, query: &str, time: &str) -> Result<BTreeMap<u16, u64>, SourceError> {
        let (status, body) = self.get(query, time).await?;
        promql::parse_groups(status, &body).map_err(|failure| self.error(query, failure))
    }

    async fn count(&self, query: &str, time: &str) -> Result<u64, SourceError> {
        let (status, body) = self.get(query, time).await?;
        promql::parse_count(status, &body).map_err(|failure| self.error(query, failure))
    }

    async fn histogram(&self, query: &str, time: &str) -> Result<(Vec<(f64, u64)>, u64), SourceError> {
        let (status, body) = self.get(query, time).await?;
        promql::parse_histogram(status, &body).map_err(|failure| self.error(query, failure))
    }

    /// Runs one instant query; the status and body are judged by the caller.
    async fn get(&self, query: &str, time: &str) -> Result<(u16, Vec<u8>), SourceError> {
        let mut url = self.query_url.clone();
        url.query_pairs_mut().append_pair("query", query).append_pair("time", time);
        let response = self
            .client
            .get(url)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| self.error(query, QueryFailure::Request(crate::error::chain(&e.without_url()))))?;
        let status = response.status().as_u16();
        let body = crate::read_body(response, MAX_ANSWER_BYTES)
            .await
            .map_err(|reason| self.error(query, QueryFailure::Request(reason)))?;
        Ok((status, body))
    }

    fn error(&self, query: &str, failure: QueryFailure) -> SourceError {
        SourceError::Prometheus { url: Box::new(self.query_url.clone()), query: query.to_string(), failure }
    }
}

impl MetricSource for PrometheusSource {
    fn window<'a>(&'a self, q: &'a WindowQuery) -> BoxFuture<'a, Result<WindowMetrics, SourceError>> {
        Box::pin(self.read(q))
    }
}

/// `<base>/api/v1/query`, keeping a path prefix of the base (`Url::join`
/// alone would drop its last segment when it has no trailing slash).
fn query_url(mut base: Url) -> Url {
    base.set_query(None);
    base.set_fragment(None);
    let path = base.path().trim_end_matches('/').to_string();
    base.set_path(&format!("{path}/api/v1/query"));
    base
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_url_keeps_path_prefixes() {
        let cases = [
            ("http://prom:9090", "http://prom:9090/api/v1/query"),
            ("http://prom:9090/", "http://prom:9090/api/v1/query"),
            ("https://example.com/prometheus", "https://example.com/prometheus/api/v1/query"),
            ("https://example.com/prometheus/?x=1#f", "https://example.com/prometheus/api/v1/query"),
        ];
        for (base, expected) in cases {
            assert_eq!(query_url(base.parse().expect("valid URL")).as_str(), expected, "{base}");
        }
    }
}
