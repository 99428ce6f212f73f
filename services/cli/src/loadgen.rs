//! `reco loadgen`: drives `POST /v1/recommend` of a gateway and reports
//! latency percentiles and throughput.
//!
//! Closed loop: `--concurrency` workers each send their next request as soon
//! as the previous one answered (measures capacity). Open loop: requests
//! start on a fixed schedule at `--rate` per second whatever the answers do,
//! and latency counts from the scheduled start, so a stalled server shows up
//! in the percentiles instead of silently slowing the generator down
//! (no coordinated omission).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde::Serialize;
use tokio::sync::Semaphore;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LoopMode {
    /// Fixed number of workers, each waiting for its answer.
    Closed,
    /// Fixed arrival rate, independent of the answers.
    Open,
}

/// Flags of `reco loadgen`.
#[derive(Debug, Args)]
pub struct LoadgenArgs {
    /// Gateway base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    #[arg(long, value_enum, default_value_t = LoopMode::Closed)]
    pub mode: LoopMode,
    /// Closed loop: concurrent workers. Open loop: most requests in flight
    /// (later ones are counted as dropped).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Open loop: requests per second.
    #[arg(long, default_value_t = 300.0)]
    pub rate: f64,
    /// Measured duration in seconds (after the warm-up).
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Warm-up seconds, not measured.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Users are `first_user..first_user + users` (MovieLens ids from 1), picked round-robin.
    #[arg(long, default_value_t = 943)]
    pub users: u32,
    /// The first user id: past the catalogue's users (e.g. 100000) every request is a new user
    /// without history, the shift the feature-drift monitors should notice.
    #[arg(long, default_value_t = 1)]
    pub first_user: u64,
    #[arg(long, default_value_t = 20)]
    pub page_size: u32,
    /// Write the report as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub mode: LoopMode,
    pub concurrency: usize,
    pub target_rate: Option<f64>,
    pub seconds: f64,
    pub requests: u64,
    pub errors: u64,
    pub degraded: u64,
    /// Open loop: requests not sent because `concurrency` were in flight.
    pub dropped: u64,
    pub throughput_rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The `q` quantile (0..=1) of sorted `values` (nearest rank), NaN for none.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    reco_runtime::stats::nearest_rank(sorted, q).unwrap_or(f64::NAN)
}

#[derive(Default)]
struct Tally {
    latencies_ms: Vec<f64>,
    errors: u64,
    degraded: u64,
}

struct Target {
    client: reqwest::Client,
    url: String,
    users: u32,
    first_user: u64,
    page_size: u32,
}

impl Target {
    /// One request; `Ok(degraded)` on a 200.
    async fn recommend(&self, n: u64) -> anyhow::Result<bool> {
        let user = (n % u64::from(self.users.max(1))) + self.first_user;
        let body = serde_json::json!({ "user_id": user.to_string(), "page_size": self.page_size });
        let response = self.client.post(&self.url).json(&body).send().await?;
        if !response.status().is_success() {
            bail!("HTTP {}", response.status());
        }
        let value: serde_json::Value = response.json().await?;
        Ok(value.get("degraded").and_then(serde_json::Value::as_bool).unwrap_or(false))
    }
}

fn record(tally: &std::sync::Mutex<Tally>, measured: bool, started: Instant, outcome: anyhow::Result<bool>) {
    if !measured {
        return;
    }
    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
    match outcome {
        Ok(degraded) => {
            t.latencies_ms.push(started.elapsed().as_secs_f64() * 1e3);
            t.degraded += u64::from(degraded);
        }
        Err(_) => t.errors += 1,
    }
}

pub async fn run(args: LoadgenArgs) -> anyhow::Result<LoadReport> {
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if args.concurrency == 0
        || !positive(args.rate)
        || !positive(args.duration)
        || args.warmup.is_nan()
        || args.warmup < 0.0
    {
        bail!("--concurrency, --rate and --duration must be positive and --warmup not negative");
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client")?;
    let target = Arc::new(Target {
        client,
        url: format!("{}/v1/recommend", args.url.trim_end_matches('/')),
        users: args.users,
        first_user: args.first_user,
        page_size: args.page_size,
    });
    let tally = Arc::new(std::sync::Mutex::new(Tally::default()));
    let begin = Instant::now();
    let warmup = Duration::from_secs_f64(args.warmup);
    let end = warmup + Duration::from_secs_f64(args.duration);
    let mut dropped = 0u64;
    match args.mode {
        LoopMode::Closed => {
            let workers: Vec<_> = (0..args.concurrency as u64)
                .map(|w| {
                    let (target, tally) = (target.clone(), tally.clone());
                    tokio::spawn(async move {
                        let mut n = w;
                        while begin.elapsed() < end {
                            let started = Instant::now();
                            let measured = begin.elapsed() >= warmup;
                            let outcome = target.recommend(n).await;
                            record(&tally, measured, started, outcome);
                            n += 1 << 20;
                        }
                    })
                })
                .collect();
            for w in workers {
                w.await?;
            }
        }
        LoopMode::Open => {
            let slots = Arc::new(Semaphore::new(args.concurrency));
            let interval = Duration::from_secs_f64(1.0 / args.rate);
            let mut tasks = tokio::task::JoinSet::new();
            let mut n = 0u64;
            loop {
                let scheduled = begin + interval.mul_f64(n as f64);
                if scheduled.duration_since(begin) >= end {
                    break;
                }
                tokio::time::sleep_until(scheduled.into()).await;
                let measured = scheduled.duration_since(begin) >= warmup;
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    dropped += u64::from(measured);
                    n += 1;
                    continue;
                };
                let (target, tally) = (target.clone(), tally.clone());
                tasks.spawn(async move {
                    let outcome = target.recommend(n).await;
                    record(&tally, measured, scheduled, outcome);
                    drop(permit);
                });
                n += 1;
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        }
    }
    let seconds = args.duration;
    let mut t = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
    t.latencies_ms.sort_by(f64::total_cmp);
    let requests = t.latencies_ms.len() as u64 + t.errors;
    let report = LoadReport {
        mode: args.mode,
        concurrency: args.concurrency,
        target_rate: (args.mode == LoopMode::Open).then_some(args.rate),
        seconds,
        requests,
        errors: t.errors,
        degraded: t.degraded,
        dropped,
        throughput_rps: t.latencies_ms.len() as f64 / seconds,
        p50_ms: quantile(&t.latencies_ms, 0.5),
        p90_ms: quantile(&t.latencies_ms, 0.9),
        p99_ms: quantile(&t.latencies_ms, 0.99),
        max_ms: t.latencies_ms.last().copied().unwrap_or(f64::NAN),
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

/// One line per run, for humans.
pub fn summary(r: &LoadReport) -> String {
    let shape = match r.target_rate {
        Some(rate) => format!("open loop at {rate:.0} req/s (at most {} in flight)", r.concurrency),
        None => format!("closed loop, {} workers", r.concurrency),
    };
    format!(
        "{shape}: {} requests in {:.0} s, {:.0} req/s, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.1} ms, \
         {} errors, {} degraded, {} dropped",
        r.requests,
        r.seconds,
        r.throughput_rps,
        r.p50_ms,
        r.p90_ms,
        r.p99_ms,
        r.max_ms,
        r.errors,
        r.degraded,
        r.dropped
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_latencies_have_no_quantile() {
        assert!(quantile(&[], 0.5).is_nan());
        assert_eq!(quantile(&[3.0], 0.99), 3.0);
    }

    #[tokio::test]
    async fn both_loops_measure_a_real_server_and_count_failures() {
        use axum::{Json, Router, routing::post};
        reco_runtime::tls::install_crypto_provider();
        let app = Router::new().route(
            "/v1/recommend",
            post(|Json(body): Json<serde_json::Value>| async move {
                // Every 4th user fails: the report must count it.
                let user: u64 = body["user_id"].as_str().and_then(|u| u.parse().ok()).unwrap_or(0);
                if user.is_multiple_of(4) {
                    Err(axum::http::StatusCode::SERVICE_UNAVAILABLE)
                } else {
                    Ok(Json(serde_json::json!({ "items": [], "degraded": user % 4 == 1 })))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        for mode in [LoopMode::Closed, LoopMode::Open] {
            let args = LoadgenArgs {
                url: url.clone(),
                mode,
                concurrency: 4,
                rate: 400.0,
                duration: 0.5,
                warmup: 0.1,
                users: 8,
                first_user: 1,
                page_size: 10,
                json: None,
            };
            let r = run(args).await.unwrap();
            assert!(r.requests > 20, "{r:?}");
            let failure_share = r.errors as f64 / r.requests as f64;
            assert!((0.15..0.35).contains(&failure_share), "{r:?}");
            assert!(r.degraded > 0 && r.p50_ms > 0.0 && r.p99_ms >= r.p50_ms, "{r:?}");
            if mode == LoopMode::Open {
                assert!((150.0..=420.0).contains(&(r.requests as f64 / 0.5)), "open loop keeps its rate: {r:?}");
            }
        }
    }
}
