//! `reco train`: flags, data-set resolution and the summary printed at the end.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use reco_trainer::incremental::Incremental;
use reco_trainer::ranking::RankerOptions;
use reco_trainer::retrieval::TwoTowerOptions;
use reco_trainer::{Progress, TrainOptions};

/// Flags of `reco train`. Defaults are the library's, checked by `reco tune` on
/// validation (docs/training.md); the EASE λ, the two-tower and ranker epoch
/// counts and the value model are tuned on validation in every run.
#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub run: RunFlags,

    /// Where the version goes: a directory (created if missing), or an object store
    /// (`s3://bucket/prefix`, `gs://...`, `az://...`; credentials from AWS_*, GOOGLE_*, AZURE_*),
    /// which gets the files of --work-dir once training succeeded, its manifest last.
    #[arg(long, env = "RECO_OUT")]
    pub out: String,

    /// The local directory a run with an object-store --out trains in (kept, so --resume works);
    /// a temporary directory, removed after the upload, when not given.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,

    /// Random seed; the run is deterministic given it.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// Maximum two-tower epochs (early stopping on validation NDCG@10 may stop sooner).
    #[arg(long, default_value_t = TwoTowerOptions::default().max_epochs)]
    pub epochs: usize,

    /// Two-tower epochs without validation improvement before stopping.
    #[arg(long, default_value_t = TwoTowerOptions::default().patience)]
    pub patience: usize,

    /// Two-tower batch size (also the number of in-batch negatives).
    #[arg(long, default_value_t = TwoTowerOptions::default().batch_size)]
    pub batch_size: usize,

    /// Two-tower learning rate (Adam).
    #[arg(long, default_value_t = TwoTowerOptions::default().learning_rate)]
    pub learning_rate: f64,

    /// Width of the two-tower output embeddings.
    #[arg(long, default_value_t = TwoTowerOptions::default().out_dim)]
    pub embedding_dim: i64,

    /// Softmax temperature of the two-tower scores.
    #[arg(long, default_value_t = TwoTowerOptions::default().temperature)]
    pub temperature: f64,

    /// Uniform random negatives mixed into each batch's softmax.
    #[arg(long, default_value_t = TwoTowerOptions::default().uniform_negatives)]
    pub uniform_negatives: usize,

    /// Hard negatives per example mined from the cross-batch queue (0 turns mining off).
    #[arg(long, default_value_t = TwoTowerOptions::default().hard_negatives)]
    pub hard_negatives: usize,

    /// Most similar queue items skipped before the hard-negative window (likely false negatives).
    #[arg(long, default_value_t = TwoTowerOptions::default().hard_skip)]
    pub hard_skip: usize,

    /// Maximum ranker epochs (early stopping on validation NDCG@10).
    #[arg(long, default_value_t = RankerOptions::default().max_epochs)]
    pub ranker_epochs: usize,

    /// Candidates from each of the two-tower and item-to-item sources per user for the ranker.
    #[arg(long, default_value_t = RankerOptions::default().per_source)]
    pub candidates: usize,

    /// Inclusive rating bounds checked by validation, as MIN:MAX.
    #[arg(long, default_value = "0:5")]
    pub rating_range: String,

    /// Continue from the epoch checkpoints in OUT/checkpoint (same flags required).
    #[arg(long)]
    pub resume: bool,

    /// RecommenderPipeline this model version belongs to (ModelVersion spec.pipeline).
    #[arg(long, default_value = "ml-100k")]
    pub pipeline: String,

    /// ModelVersion name (metadata.name; default: PIPELINE-sSEED).
    #[arg(long)]
    pub model_version: Option<String>,

    /// ModelVersion namespace (omitted from the manifest when not given).
    #[arg(long)]
    pub namespace: Option<String>,

    /// ModelVersion spec.artifactUri (default: file:// URI of --out).
    #[arg(long)]
    pub artifact_uri: Option<String>,

    /// ModelVersion spec.image, overriding the pipeline's serving image.
    #[arg(long)]
    pub image: Option<String>,

    #[command(flatten)]
    pub incremental: IncrementalFlags,
}

/// Incremental training: warm-start from a served version and learn from the events logged since.
#[derive(Debug, Args)]
pub struct IncrementalFlags {
    /// Start from this version (a directory, file:// or object-store URI; its manifest is
    /// verified) and add the events logged since it (--events) to train. It must have been
    /// trained on --data with the same --max-users; the run also scores it on the same split
    /// (parent_* in metrics.json).
    #[arg(long, requires = "events", value_name = "VERSION")]
    pub init_from: Option<String>,

    /// With --init-from: the features service's event logs (`<data-dir>/<pipeline>/events.jsonl`,
    /// in order), or the training topic as `kafka://BROKER[,BROKER...]/TOPIC`.
    #[arg(long, num_args = 1.., requires = "init_from", value_name = "LOG")]
    pub events: Vec<String>,

    /// With --init-from: the events at or after this Unix time in milliseconds (default: when
    /// the parent finished training, from its training.json).
    #[arg(long, requires = "init_from")]
    pub events_since_ms: Option<i64>,
}

/// Flags `reco train` and `reco tune` share: the data and how a run uses the machine.
#[derive(Debug, Args)]
pub struct RunFlags {
    /// Data set: `ml-100k` (from the cache filled by scripts/ensure-ml100k.sh),
    /// or a directory holding NAME.inter/.user/.item (RecBole atomic files) or
    /// interactions.csv|tsv with optional users.csv|tsv and items.csv|tsv.
    #[arg(long, env = "RECO_DATA")]
    pub data: String,

    /// Keep only the first N users (quick runs).
    #[arg(long)]
    pub max_users: Option<usize>,

    /// libtorch CPU threads (default: all cores).
    #[arg(long, env = "RECO_THREADS")]
    pub threads: Option<usize>,

    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

impl RunFlags {
    /// The trainer's options for these flags, writing to `out` with `seed`.
    fn options(&self, out: PathBuf, seed: u64) -> anyhow::Result<TrainOptions> {
        let data = reco_trainer::pipeline::resolve_data(&self.data)?;
        let mut o = TrainOptions::new(data, out, seed);
        o.max_users = self.max_users;
        o.threads = self.threads;
        // Progress bars only on a terminal.
        o.progress = Progress { enabled: !self.quiet && std::io::stderr().is_terminal() };
        Ok(o)
    }
}

fn parse_range(s: &str) -> anyhow::Result<(f64, f64)> {
    let (a, b) = s.split_once(':').with_context(|| format!("--rating-range {s:?}: expected MIN:MAX"))?;
    let lo: f64 = a.trim().parse().with_context(|| format!("--rating-range {s:?}: bad minimum"))?;
    let hi: f64 = b.trim().parse().with_context(|| format!("--rating-range {s:?}: bad maximum"))?;
    if lo > hi {
        bail!("--rating-range {s:?}: minimum above maximum");
    }
    Ok((lo, hi))
}

/// Counts that cannot train anything are refused before any data is read (0 epochs or 0 patience would write an
/// untrained model without complaint).
fn check_counts(a: &TrainArgs) -> anyhow::Result<()> {
    for (flag, value) in [("--epochs", a.epochs), ("--patience", a.patience), ("--ranker-epochs", a.ranker_epochs)] {
        if value == 0 {
            bail!("{flag} must be at least 1");
        }
    }
    if a.batch_size < 2 {
        bail!("--batch-size must be at least 2 (in-batch negatives)");
    }
    Ok(())
}

/// Where a run writes, and the object store it uploads to afterwards.
struct Output {
    dir: PathBuf,
    upload_to: Option<String>,
    _temporary: Option<tempfile::TempDir>,
}

fn output(out: &str, work_dir: Option<&PathBuf>) -> anyhow::Result<Output> {
    let local = out.strip_prefix("file://").or((!out.contains("://")).then_some(out));
    if let Some(path) = local {
        if work_dir.is_some() {
            bail!("--work-dir is for an object-store --out; {out:?} is a local directory");
        }
        return Ok(Output { dir: PathBuf::from(path), upload_to: None, _temporary: None });
    }
    let (dir, temporary) = match work_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let tmp = tempfile::Builder::new().prefix("reco-train-").tempdir().context("creating a work directory")?;
            (tmp.path().to_path_buf(), Some(tmp))
        }
    };
    Ok(Output { dir, upload_to: Some(out.to_owned()), _temporary: temporary })
}

pub fn run(a: TrainArgs) -> anyhow::Result<()> {
    check_counts(&a)?;
    let out = output(&a.out, a.work_dir.as_ref())?;
    let mut o = a.run.options(out.dir.clone(), a.seed)?;
    o.rules.rating_range = parse_range(&a.rating_range)?;
    o.two_tower.max_epochs = a.epochs;
    o.two_tower.patience = a.patience;
    o.two_tower.batch_size = a.batch_size;
    o.two_tower.learning_rate = a.learning_rate;
    o.two_tower.out_dim = a.embedding_dim;
    o.two_tower.temperature = a.temperature;
    o.two_tower.uniform_negatives = a.uniform_negatives;
    o.two_tower.hard_negatives = a.hard_negatives;
    o.two_tower.hard_skip = a.hard_skip;
    o.ranker.max_epochs = a.ranker_epochs;
    o.ranker.per_source = a.candidates;
    o.resume = a.resume;
    o.pipeline = a.pipeline;
    o.version = a.model_version;
    o.namespace = a.namespace;
    o.artifact_uri = a.artifact_uri.or_else(|| out.upload_to.clone());
    o.image = a.image;
    let _incremental_files = match &a.incremental.init_from {
        Some(parent) => {
            let (incremental, files) = incremental(parent, &a.incremental)?;
            o.incremental = Some(incremental);
            Some(files)
        }
        None => None,
    };

    let summary = reco_trainer::train(&o).context("training failed")?;
    if let Some(uri) = &out.upload_to {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let options = reco_artifacts::StoreOptions::default();
        let digest = runtime.block_on(reco_artifacts::upload(&out.dir, uri, &options))?;
        println!("uploaded to {uri} ({digest})");
    }
    let r = &summary.report;
    println!("model version {} written to {}", summary.version, out.dir.display());
    println!(
        "wall {:.1}s, peak RSS {:.0} MiB, {} threads, two-tower best epoch {}",
        r.wall_seconds,
        r.peak_rss_mib.unwrap_or(f64::NAN),
        r.threads,
        r.two_tower_best_epoch
    );
    println!(
        "{:<18} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "test", "ndcg@10", "recall@10", "ndcg@20", "recall@20", "mrr@10", "cov@10"
    );
    for (name, m) in &summary.metrics.models {
        let g = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
        println!(
            "{:<18} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.3}",
            name,
            g("ndcg@10"),
            g("recall@10"),
            g("ndcg@20"),
            g("recall@20"),
            g("mrr@10"),
            g("coverage@10")
        );
    }
    Ok(())
}

/// The verified parent directory and the exported events of an incremental run; the temporary
/// directories they may live in are removed when the guard drops.
fn incremental(parent: &str, flags: &IncrementalFlags) -> anyhow::Result<(Incremental, tempfile::TempDir)> {
    let work = tempfile::Builder::new().prefix("reco-incremental-").tempdir().context("creating a work directory")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let options = reco_artifacts::StoreOptions::default();
    let fetched = runtime
        .block_on(reco_artifacts::fetch(parent, &options, &work.path().join("parent"), None))
        .with_context(|| format!("--init-from {parent}"))?;
    let since_ms = match flags.events_since_ms {
        Some(ms) => Some(ms),
        None => parent_finished_at_ms(&fetched.dir)?,
    };
    let logs = crate::events::open_logs(&flags.events)?;
    let events = work.path().join("events");
    let summary = crate::events::export(logs, &events, since_ms)?;
    if summary.interactions == 0 {
        bail!("--events: no positive event at or after {since_ms:?} ms in {:?}: nothing to learn from", flags.events);
    }
    let incremental = Incremental { parent: fetched.dir, events: events.join("interactions.csv") };
    Ok((incremental, work))
}

/// When the parent finished training, from its training.json (versions trained before it was
/// recorded have none: then every logged event counts).
fn parent_finished_at_ms(dir: &std::path::Path) -> anyhow::Result<Option<i64>> {
    let path = dir.join(reco_model::artifacts::files::TRAINING);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let report: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let finished = report.get("finished_at_ms").and_then(serde_json::Value::as_i64);
    if finished.is_none() {
        tracing::warn!(training = %path.display(), "the parent does not say when it was trained: every logged event counts (--events-since-ms chooses)");
    }
    Ok(finished)
}

/// Flags of `reco tune`.
#[derive(Debug, Args)]
pub struct TuneArgs {
    #[command(flatten)]
    pub run: RunFlags,

    /// Output directory: `tuning.json` and one `trial-NN` model directory per trial.
    #[arg(long)]
    pub out: PathBuf,

    /// Trials, the current defaults being the first.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub trials: u32,

    /// Training seed of every trial (trials differ by their settings only).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// Seed of the random search.
    #[arg(long, default_value_t = 0)]
    pub search_seed: u64,
}

pub fn tune(a: TuneArgs) -> anyhow::Result<()> {
    let o = a.run.options(a.out.clone(), a.seed)?;
    let report = reco_trainer::tune::tune(&o, a.trials as usize, a.search_seed).context("tuning failed")?;
    println!("objective: {}", report.objective);
    println!("{:>5} {:>9} {:>9} {:>11} {:>7}", "trial", "ndcg@10", "recall@10", "tt ndcg@10", "wall");
    let mut ranked: Vec<_> = report.trials.iter().collect();
    ranked.sort_by(|x, y| y.score.total_cmp(&x.score));
    for t in ranked {
        let recall = t.validation.get("recall@10").copied().unwrap_or(f64::NAN);
        println!(
            "{:>5} {:>9.4} {:>9.4} {:>11.4} {:>6.0}s{}",
            t.trial,
            t.score,
            recall,
            t.two_tower_ndcg_at_10,
            t.wall_seconds,
            if t.trial == 0 { "  (current defaults)" } else { "" }
        );
    }
    let best = &report.trials[report.best];
    println!(
        "best: trial {} (validation NDCG@10 {:.4}); its settings are in {}",
        best.trial,
        best.score,
        a.out.join("tuning.json").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ranker's history-length feature is capped where the features service's default
    /// history stops, so training never sees a value serving cannot produce.
    #[test]
    fn the_history_feature_cap_is_the_features_services_history_bound() {
        assert_eq!(reco_model::scoring::HISTORY_FEATURE_CAP, reco_features::model::DEFAULT_HISTORY_LEN);
    }

    #[test]
    fn a_local_out_is_written_in_place_and_an_object_store_out_is_uploaded_from_a_work_dir() {
        let local = output("models/v1", None).unwrap();
        assert_eq!((local.dir, local.upload_to), (PathBuf::from("models/v1"), None));
        let file = output("file:///models/v1", None).unwrap();
        assert_eq!((file.dir, file.upload_to), (PathBuf::from("/models/v1"), None));

        let work = PathBuf::from("/tmp/work");
        let s3 = output("s3://bucket/explore/v2", Some(&work)).unwrap();
        assert_eq!((s3.dir, s3.upload_to.as_deref()), (work, Some("s3://bucket/explore/v2")));
        let temporary = output("gs://bucket/v2", None).unwrap();
        assert!(temporary.dir.exists(), "a temporary work directory while the run lasts");
        let dir = temporary.dir.clone();
        drop(temporary);
        assert!(!dir.exists(), "removed after the upload");

        let err = output("models/v1", Some(&PathBuf::from("/tmp/w"))).err().unwrap().to_string();
        assert!(err.contains("--work-dir is for an object-store --out"), "{err}");
    }
}
