//! ANN benchmark: the embedded store (qdrant-edge HNSW) against exact brute force on synthetic embeddings.
//!
//! `cargo run --release -p reco-vector-store --example ann_bench -- --items 1000000 --dim 64 --k 500 --queries 200`
//!
//! Items are L2-normalised draws from a seeded Gaussian mixture (clusters of different sizes, like real item
//! embeddings); queries come from the same mixture. Every query excludes `--exclude` random ids (the "already
//! seen" list retrieval sends). For each `--ef`, it reports search latency p50/p99 of the store
//! (`EdgeStore::search_blocking`, one query at a time) and recall@100 / recall@k against the exact top-k,
//! which is computed in the same run by a multithreaded f32 dot-product scan (`exact::top_k_parallel`).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Normal, StandardNormal};
use reco_vector_store::exact::{recall_at, top_k_parallel};
use reco_vector_store::{
    CollectionSpec, Distance, EdgeStore, HnswParams, ItemPayload, OpenMode, Point, SearchFilter, VectorStore,
};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "qdrant-edge HNSW vs exact top-k on synthetic clustered embeddings")]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    items: usize,
    #[arg(long, default_value_t = 64)]
    dim: usize,
    #[arg(long, default_value_t = 500)]
    k: usize,
    #[arg(long, default_value_t = 200)]
    queries: usize,
    /// Mixture components.
    #[arg(long, default_value_t = 1_000)]
    clusters: usize,
    /// Per-coordinate noise around a cluster centre (centres have unit norm).
    #[arg(long, default_value_t = 0.1)]
    spread: f32,
    /// Ids excluded per query ("already seen").
    #[arg(long, default_value_t = 200)]
    exclude: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// HNSW edges per node.
    #[arg(long, default_value_t = HnswParams::default().m)]
    m: usize,
    /// HNSW build beam width.
    #[arg(long, default_value_t = HnswParams::default().ef_construct)]
    ef_construct: usize,
    /// Search beam widths to measure, comma-separated; the store uses max(ef, k), so only values above k differ.
    #[arg(long, value_delimiter = ',', default_values_t = [HnswParams::default().ef_search])]
    ef: Vec<usize>,
    /// Threads for the exact scan (default: all cores).
    #[arg(long)]
    exact_threads: Option<usize>,
    /// Where the store is built (default: a temporary directory, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Serialize)]
struct Report {
    items: usize,
    dim: usize,
    k: usize,
    queries: usize,
    excluded_per_query: usize,
    m: usize,
    ef_construct: usize,
    cores: usize,
    load_s: f64,
    index_build_s: f64,
    rss_data_mib: f64,
    rss_after_build_mib: f64,
    peak_rss_mib: f64,
    indexed_points: u64,
    exact: ExactFigures,
    ann: Vec<AnnFigures>,
}

#[derive(Serialize)]
struct ExactFigures {
    threads: usize,
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(Serialize)]
struct AnnFigures {
    /// Effective beam width, max(--ef, k).
    ef: usize,
    p50_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
    recall_at_100: f64,
    recall_at_k: f64,
}

/// Reads a `/proc/self/status` field in MiB (`VmRSS`, `VmHWM`); 0 where unavailable.
fn proc_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
    v.iter_mut().for_each(|x| *x /= norm);
}

/// Unit-norm cluster centres and skewed cluster weights (Zipf-like: a few big genres, a long tail).
struct Mixture {
    centres: Vec<Vec<f32>>,
    cumulative: Vec<f64>,
    noise: Normal<f32>,
}

impl Mixture {
    fn new(rng: &mut StdRng, clusters: usize, dim: usize, spread: f32) -> anyhow::Result<Self> {
        let centres = (0..clusters.max(1))
            .map(|_| {
                let mut c: Vec<f32> = (0..dim).map(|_| StandardNormal.sample(rng)).collect();
                normalise(&mut c);
                c
            })
            .collect();
        let mut total = 0.0;
        let cumulative = (1..=clusters.max(1))
            .map(|r| {
                total += 1.0 / (r as f64).powf(0.8);
                total
            })
            .collect();
        Ok(Self { centres, cumulative, noise: Normal::new(0.0, spread).context("spread")? })
    }

    fn sample(&self, rng: &mut StdRng) -> (usize, Vec<f32>) {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let u = rng.random_range(0.0..total);
        let cluster = self.cumulative.partition_point(|&c| c < u).min(self.centres.len() - 1);
        let mut v: Vec<f32> = self.centres[cluster].iter().map(|c| c + self.noise.sample(rng)).collect();
        normalise(&mut v);
        (cluster, v)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    reco_runtime::stats::nearest_rank(sorted, p).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.items > 0 && args.dim > 0 && args.k > 0 && args.queries > 0, "sizes must be positive");
    let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    let exact_threads = args.exact_threads.unwrap_or(cores).max(1);
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mixture = Mixture::new(&mut rng, args.clusters, args.dim, args.spread)?;
    const GENRES: usize = 20;

    eprintln!("generating {} x {} vectors ...", args.items, args.dim);
    let mut matrix = Vec::with_capacity(args.items * args.dim);
    let mut genres = Vec::with_capacity(args.items);
    for _ in 0..args.items {
        let (cluster, v) = mixture.sample(&mut rng);
        matrix.extend_from_slice(&v);
        genres.push(cluster % GENRES);
    }
    let rss_data_mib = proc_mib("VmRSS");

    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let spec = CollectionSpec {
        pipeline: "bench".into(),
        version: format!("n{}-d{}-m{}-efc{}", args.items, args.dim, args.m, args.ef_construct),
        dim: args.dim,
        distance: Distance::Dot,
    };
    let hnsw = HnswParams { m: args.m, ef_construct: args.ef_construct, ef_search: args.ef[0] };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let store = rt.block_on(EdgeStore::open(dir, spec, OpenMode::CreateIfMissing, hnsw))?;

    eprintln!("loading ...");
    let started = Instant::now();
    for (chunk_index, chunk) in matrix.chunks(10_000 * args.dim).enumerate() {
        let first = chunk_index * 10_000;
        let points: Vec<Point> = chunk
            .chunks_exact(args.dim)
            .enumerate()
            .map(|(i, v)| Point {
                id: (first + i) as u64,
                vector: v.to_vec(),
                payload: ItemPayload { category: vec![format!("g{}", genres[first + i])], published_at: 1_700_000_000 },
            })
            .collect();
        rt.block_on(store.upsert(&points))?;
    }
    let load_s = started.elapsed().as_secs_f64();
    eprintln!("loaded in {load_s:.1} s; building the index ...");
    let started = Instant::now();
    rt.block_on(store.commit())?;
    let index_build_s = started.elapsed().as_secs_f64();
    let info = rt.block_on(store.info())?;
    let rss_after_build_mib = proc_mib("VmRSS");
    eprintln!("built in {index_build_s:.1} s ({} of {} points indexed)", info.indexed_points, info.points);

    let queries: Vec<(Vec<f32>, SearchFilter)> = (0..args.queries)
        .map(|_| {
            let (_, q) = mixture.sample(&mut rng);
            let exclude: HashSet<u64> =
                (0..args.exclude.min(args.items)).map(|_| rng.random_range(0..args.items as u64)).collect();
            (q, SearchFilter { exclude, categories: None })
        })
        .collect();

    eprintln!("exact top-{} with {exact_threads} threads ...", args.k);
    let mut exact_times = Vec::with_capacity(queries.len());
    let truths: Vec<_> = queries
        .iter()
        .map(|(q, f)| {
            let t = Instant::now();
            let hits = top_k_parallel(&matrix, args.dim, q, args.k, exact_threads, &|id| !f.exclude.contains(&id));
            exact_times.push(t.elapsed());
            hits
        })
        .collect();
    exact_times.sort();

    let mut efs: Vec<usize> = args.ef.iter().map(|&ef| ef.max(args.k)).collect();
    efs.sort_unstable();
    efs.dedup();
    let mut ann = Vec::new();
    for ef in efs {
        let store = store.with_ef_search(ef);
        // Warm-up: page in the graph and vectors once, as a serving process would have.
        for (q, f) in queries.iter().take(10) {
            store.search_blocking(q, args.k, f)?;
        }
        let mut times = Vec::with_capacity(queries.len());
        let (mut r100, mut rk) = (0.0, 0.0);
        for ((q, f), truth) in queries.iter().zip(&truths) {
            let t = Instant::now();
            let hits = store.search_blocking(q, args.k, f)?;
            times.push(t.elapsed());
            r100 += recall_at(&hits, truth, 100);
            rk += recall_at(&hits, truth, args.k);
        }
        let mean_ms = times.iter().map(Duration::as_secs_f64).sum::<f64>() * 1e3 / times.len() as f64;
        times.sort();
        let n = queries.len() as f64;
        ann.push(AnnFigures {
            ef,
            p50_ms: percentile(&times, 0.50),
            p99_ms: percentile(&times, 0.99),
            mean_ms,
            recall_at_100: r100 / n,
            recall_at_k: rk / n,
        });
    }

    let report = Report {
        items: args.items,
        dim: args.dim,
        k: args.k,
        queries: args.queries,
        excluded_per_query: args.exclude,
        m: args.m,
        ef_construct: args.ef_construct,
        cores,
        load_s,
        index_build_s,
        rss_data_mib,
        rss_after_build_mib,
        peak_rss_mib: proc_mib("VmHWM"),
        indexed_points: info.indexed_points,
        exact: ExactFigures {
            threads: exact_threads,
            p50_ms: percentile(&exact_times, 0.50),
            p99_ms: percentile(&exact_times, 0.99),
        },
        ann,
    };
    print_table(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn print_table(r: &Report) {
    println!(
        "{} items x {} dims, top-{}, {} queries excluding {} ids each, {} cores; HNSW m={} ef_construct={}",
        r.items, r.dim, r.k, r.queries, r.excluded_per_query, r.cores, r.m, r.ef_construct
    );
    println!(
        "load {:.1} s, index build {:.1} s ({} points indexed); RSS: data {:.0} MiB, after build {:.0} MiB, peak {:.0} MiB",
        r.load_s, r.index_build_s, r.indexed_points, r.rss_data_mib, r.rss_after_build_mib, r.peak_rss_mib
    );
    println!();
    println!("| search | p50 ms | p99 ms | recall@100 | recall@{} |", r.k);
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| exact scan, {} threads | {:.2} | {:.2} | 1.000 | 1.000 |",
        r.exact.threads, r.exact.p50_ms, r.exact.p99_ms
    );
    for a in &r.ann {
        println!(
            "| qdrant-edge hnsw_ef={} | {:.2} | {:.2} | {:.3} | {:.3} |",
            a.ef, a.p50_ms, a.p99_ms, a.recall_at_100, a.recall_at_k
        );
    }
}
