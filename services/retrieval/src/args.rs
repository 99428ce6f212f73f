//! `reco serve retrieval` flags and the settings the service runs with.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use reco_model::artifacts::CandidateCounts;
use reco_runtime::flags::VersionFlags;

use crate::mix::{SOURCES, Source};

/// Largest `k` a request may ask for (the CRD allows `candidates` up to 10000).
pub const MAX_K: u32 = 10_000;

/// Which vector store backend; the names are the operator's lower-cased `VectorStore` variants.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum VectorStoreKind {
    /// The Qdrant engine in this process, persisted under `--data-dir`.
    Embedded,
    /// A Qdrant server at `--qdrant-url`.
    Qdrant,
}

/// Flags of `reco serve retrieval`. The operator passes `--pipeline --model-version --model-uri --http --grpc
/// --candidates --vector-store`, `--qdrant-url` when set and `--data-dir` (on a writable volume) for the
/// embedded store.
#[derive(clap::Args, Clone, Debug)]
pub struct RetrievalArgs {
    /// `--pipeline` also names the vector collection (`<pipeline>__<model-version>`).
    #[command(flatten)]
    pub version: VersionFlags,
    /// Most candidates one response holds (a request's `k` is capped by it).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=MAX_K as i64))]
    pub candidates: u32,
    /// Where item embeddings are searched.
    #[arg(long, value_enum, default_value_t = VectorStoreKind::Embedded)]
    pub vector_store: VectorStoreKind,
    /// Qdrant gRPC endpoint for `--vector-store=qdrant`, e.g. `http://qdrant.reco.svc:6334`.
    #[arg(long)]
    pub qdrant_url: Option<String>,
    /// Directory of the embedded vector store (`<data-dir>/vectors/<pipeline>__<version>`).
    #[arg(long, default_value = "/var/lib/reco")]
    pub data_dir: PathBuf,
    /// Weight of each source when mixing, e.g. `two_tower=1,item_to_item=1,popular=0.5,fresh=0.2`; 0 turns a
    /// source off; unnamed sources keep their default.
    #[arg(long, default_value = "")]
    pub source_weights: SourceWeights,
    /// Candidates from the two-tower and item-to-item sources (default: ranker.json `candidates.per_source`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=MAX_K as i64))]
    pub per_source: Option<u32>,
    /// Candidates from the popular source (default: ranker.json `candidates.popular`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=MAX_K as i64))]
    pub popular: Option<u32>,
    /// Candidates from the fresh (newest items) source.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=MAX_K as i64))]
    pub fresh: u32,
    /// Most users encoded in one user-tower forward pass.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch_max: u32,
    /// Longest wait, in microseconds, for more requests to join a batch.
    #[arg(long, default_value_t = 1000)]
    pub batch_wait_us: u64,
    /// User embeddings cached (0 disables the cache).
    #[arg(long, default_value_t = 100_000)]
    pub embedding_cache_size: u64,
    /// libtorch intra-op threads for the user tower (process-wide).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub torch_threads: u32,
}

/// Mixing weight per source, in [`SOURCES`] order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SourceWeights(pub [f32; 4]);

impl Default for SourceWeights {
    fn default() -> Self {
        SourceWeights([1.0, 1.0, 0.5, 0.2])
    }
}

impl SourceWeights {
    pub fn get(&self, s: Source) -> f32 {
        self.0[s as usize]
    }
}

/// Why `--source-weights` did not parse.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WeightsError {
    #[error("{0:?} is not name=weight")]
    Syntax(String),
    #[error("unknown source {0:?} (expected two_tower, item_to_item, popular or fresh)")]
    Source(String),
    #[error("weight of {0} must be a finite number >= 0, got {1:?}")]
    Weight(String, String),
}

impl FromStr for SourceWeights {
    type Err = WeightsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut w = SourceWeights::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').ok_or_else(|| WeightsError::Syntax(part.to_string()))?;
            let source = SOURCES
                .iter()
                .find(|src| src.name() == name.trim())
                .ok_or_else(|| WeightsError::Source(name.trim().to_string()))?;
            let v: f32 = value
                .trim()
                .parse()
                .ok()
                .filter(|v: &f32| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| WeightsError::Weight(name.trim().to_string(), value.to_string()))?;
            w.0[*source as usize] = v;
        }
        Ok(w)
    }
}

/// What the service runs with; [`Settings::new`] fills the candidate counts from the version's ranker.json.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub weights: SourceWeights,
    pub per_source: usize,
    pub popular: usize,
    pub fresh: usize,
    /// Cap on the candidates of one response.
    pub max_candidates: usize,
    pub batch_max: usize,
    pub batch_wait: Duration,
    pub embedding_cache_size: u64,
    pub torch_threads: usize,
}

impl Settings {
    /// Defaults for a version whose ranker was trained on `counts` candidates per source.
    pub fn new(counts: CandidateCounts) -> Self {
        Settings {
            weights: SourceWeights::default(),
            per_source: counts.per_source,
            popular: counts.popular,
            fresh: 20,
            max_candidates: 500,
            batch_max: 64,
            batch_wait: Duration::from_millis(1),
            embedding_cache_size: 100_000,
            torch_threads: 1,
        }
    }

    /// The settings the flags ask for, on top of the version's defaults.
    pub fn from_args(args: &RetrievalArgs, counts: CandidateCounts) -> Self {
        let d = Settings::new(counts);
        Settings {
            weights: args.source_weights,
            per_source: args.per_source.map_or(d.per_source, |n| n as usize),
            popular: args.popular.map_or(d.popular, |n| n as usize),
            fresh: args.fresh as usize,
            max_candidates: args.candidates as usize,
            batch_max: args.batch_max as usize,
            batch_wait: Duration::from_micros(args.batch_wait_us),
            embedding_cache_size: args.embedding_cache_size,
            torch_threads: args.torch_threads as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RetrievalArgs,
    }

    #[test]
    fn the_operator_flags_parse() {
        let cli = Cli::try_parse_from([
            "reco-serve-retrieval",
            "--pipeline=explore",
            "--model-version=explore-v2",
            "--model-uri=file:///models/explore/v2",
            "--http=0.0.0.0:8080",
            "--grpc=0.0.0.0:50051",
            "--candidates=300",
            "--vector-store=qdrant",
            "--qdrant-url=http://qdrant:6334",
        ])
        .unwrap();
        assert_eq!(cli.args.vector_store, VectorStoreKind::Qdrant);
        assert_eq!(cli.args.candidates, 300);
        let s = Settings::from_args(&cli.args, CandidateCounts { per_source: 100, popular: 50 });
        assert_eq!((s.per_source, s.popular, s.max_candidates), (100, 50, 300));
        assert_eq!(s.weights, SourceWeights::default());
        let embedded = Cli::try_parse_from([
            "r",
            "--pipeline=p",
            "--model-version=v",
            "--model-uri=/m",
            "--vector-store=embedded",
        ]);
        assert_eq!(embedded.unwrap().args.vector_store, VectorStoreKind::Embedded);
        assert!(
            Cli::try_parse_from(["r", "--pipeline=p", "--model-version=v", "--model-uri=/m", "--candidates=0"])
                .is_err()
        );
    }

    #[test]
    fn source_weights_parse_and_name_the_problem() {
        let w: SourceWeights = "two_tower=2, fresh=0".parse().unwrap();
        assert_eq!(w.0, [2.0, 1.0, 0.5, 0.0]);
        assert_eq!("".parse::<SourceWeights>().unwrap(), SourceWeights::default());
        assert_eq!("pop=1".parse::<SourceWeights>(), Err(WeightsError::Source("pop".into())));
        assert_eq!("popular".parse::<SourceWeights>(), Err(WeightsError::Syntax("popular".into())));
        assert!(matches!("popular=-1".parse::<SourceWeights>(), Err(WeightsError::Weight(..))));
        assert!(matches!("popular=NaN".parse::<SourceWeights>(), Err(WeightsError::Weight(..))));
    }
}
