//! Retrieval latency per request (in process, no gRPC) at 1 and 8 concurrent callers, with the embedding
//! cache off so every request runs the user tower.
//!
//! `cargo run --release -p reco-retrieval --example latency -- <version dir> [requests per run]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use reco_model::artifacts::VersionArtifacts;
use reco_proto::{Context, RetrieveRequest, UserFeatures};
use reco_retrieval::{Metrics, RetrievalService, Settings};
use reco_vector_store::{Backend, CollectionSpec, Distance, HnswParams, OpenMode};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    reco_runtime::stats::nearest_rank(sorted, p).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: latency <version dir> [requests]")?;
    let n: usize = args.next().map_or(Ok(2000), |s| s.parse())?;
    let artifacts = Arc::new(VersionArtifacts::load(std::path::Path::new(&dir))?);
    let dim = artifacts.two_tower.config.out_dim as usize;
    let tmp = std::env::temp_dir().join(format!("reco-retrieval-latency-{}", std::process::id()));
    let spec = CollectionSpec { pipeline: "bench".into(), version: "v1".into(), dim, distance: Distance::Dot };
    let store = reco_vector_store::open(
        &Backend::Embedded { dir: tmp.clone() },
        &spec,
        OpenMode::CreateIfMissing,
        HnswParams::default(),
    )
    .await?;
    let mut settings = Settings::new(artifacts.ranker_file.candidates);
    settings.embedding_cache_size = 0;
    let (users, items) = (artifacts.user_ids.clone(), artifacts.items.iter().map(|i| i.id.clone()).collect::<Vec<_>>());
    let service =
        RetrievalService::new(artifacts, "v1".into(), settings.clone(), store, Metrics::unregistered()).await?;
    println!(
        "items {} users {} per_source {} popular {} fresh {} k 500 batch_max {} wait {:?}",
        items.len(),
        users.len(),
        settings.per_source,
        settings.popular,
        settings.fresh,
        settings.batch_max,
        settings.batch_wait
    );
    let request = |i: usize| {
        let mut x = (i as u64).wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let history = (0..30)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                items[(x >> 33) as usize % items.len()].clone()
            })
            .collect();
        RetrieveRequest {
            user: Some(UserFeatures {
                user_id: users[i % users.len()].clone(),
                known: true,
                history,
                ..Default::default()
            }),
            k: 500,
            context: Some(Context { now_ms: 1_700_000_000_000, ..Default::default() }),
            exclude_item_ids: vec![],
        }
    };
    for _ in 0..50 {
        service.retrieve(&request(0)).await?; // warm up
    }
    for callers in [1usize, 8] {
        let started = Instant::now();
        let tasks: Vec<_> = (0..callers)
            .map(|c| {
                let service = service.clone();
                let reqs: Vec<_> = (0..n / callers).map(|j| request(c * 100_000 + j)).collect();
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(reqs.len());
                    for r in &reqs {
                        let t = Instant::now();
                        service.retrieve(r).await.map(|resp| assert!(!resp.candidates.is_empty()))?;
                        lat.push(t.elapsed());
                    }
                    Ok::<_, reco_retrieval::RetrievalError>(lat)
                })
            })
            .collect();
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await??);
        }
        let wall = started.elapsed().as_secs_f64();
        lat.sort();
        println!(
            "callers {callers}: {} requests, p50 {:.2} ms, p99 {:.2} ms, {:.0} req/s",
            lat.len(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.len() as f64 / wall
        );
    }
    drop(service); // the embedded store flushes on drop, before its directory goes
    let _ = std::fs::remove_dir_all(tmp);
    Ok(())
}
