//! `reco train` end to end: read and validate the data, split it, fit
//! features and every model, evaluate all of them on the same test users,
//! and write the artifacts. The only module here that sequences I/O with
//! training; every step it calls is tested on its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use tch::Tensor;

use reco_model::Ranker;
use reco_model::artifacts::{
    CandidateCounts, EMBEDDINGS_TENSOR, ITEM_ITEM_TENSOR, RankerFile, TwoTowerFile, VersionArtifacts,
};
use reco_model::drift::DriftReference;
use reco_model::scoring::{DenseScaler, N_DENSE, ValueModel};

use crate::artifacts::{self, MetricsFile, files, write_json, write_yaml};
use crate::error::{Result, TrainError};
use crate::eval::{EvalSet, Scorer, evaluate, evaluate_ranked};
use crate::features::{self, FeatureOptions, FeatureSpace};
use crate::incremental::{self, EventCounts, Incremental};
use crate::metrics::{PairedDifference, paired_ndcg_difference};
use crate::progress::Progress;
use crate::ranking::{self, RankerData, RankerInputs, RankerOptions, SourceSet, TrainedRanker};
use crate::retrieval::{EpochLog, TrainedTwoTower, TwoTowerData, TwoTowerOptions, train_two_tower};
use crate::sources::{ItemItem, ItemItemScorer, Popularity, TwoTowerScorer};
use crate::split::{by_user, chronological_split};
use crate::table::{discover, read_layout};
use crate::validate::{DataStats, Dataset, Interaction, ValidationRules, validate};

/// Everything `reco train` can be told.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub data: PathBuf,
    pub out: PathBuf,
    pub seed: u64,
    pub rules: ValidationRules,
    pub features: FeatureOptions,
    pub two_tower: TwoTowerOptions,
    pub ranker: RankerOptions,
    /// EASE L2 strengths tried on validation.
    pub ease_lambdas: Vec<f64>,
    /// Share of each user's train history held out as ranker labels.
    pub ranker_late_ratio: f64,
    /// Keep only the first N users (quick runs and tests).
    pub max_users: Option<usize>,
    /// libtorch intra-op threads (default: all cores).
    pub threads: Option<usize>,
    /// Continue from the checkpoints in `out/checkpoint` when present.
    pub resume: bool,
    /// Evaluate on the test split (`false` while tuning: test is only read to report figures).
    pub evaluate_test: bool,
    pub pipeline: String,
    pub version: Option<String>,
    pub namespace: Option<String>,
    pub artifact_uri: Option<String>,
    pub image: Option<String>,
    pub progress: Progress,
    /// Start from a served version and add the events logged since it (`reco train --init-from`).
    pub incremental: Option<Incremental>,
}

impl TrainOptions {
    pub fn new(data: PathBuf, out: PathBuf, seed: u64) -> Self {
        TrainOptions {
            data,
            out,
            seed,
            rules: ValidationRules::default(),
            features: FeatureOptions::default(),
            two_tower: TwoTowerOptions::default(),
            ranker: RankerOptions::default(),
            ease_lambdas: vec![25.0, 50.0, 100.0, 250.0, 500.0, 1000.0],
            ranker_late_ratio: 0.125,
            max_users: None,
            threads: None,
            resume: false,
            evaluate_test: true,
            pipeline: "ml-100k".into(),
            version: None,
            namespace: None,
            artifact_uri: None,
            image: None,
            progress: Progress::hidden(),
            incremental: None,
        }
    }
}

/// Timings and resource use of a run, written to `training.json`.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub seed: u64,
    pub wall_seconds: f64,
    pub stage_seconds: BTreeMap<String, f64>,
    pub two_tower_epochs: Vec<EpochLog>,
    pub two_tower_best_epoch: usize,
    pub ranker_fit_two_tower_epochs: Vec<EpochLog>,
    pub ranker_best_epoch: usize,
    pub ranker_value_model: reco_model::scoring::ValueModel,
    pub ease_lambda: f64,
    pub peak_rss_mib: Option<f64>,
    pub threads: usize,
    pub n_users: usize,
    pub n_items: usize,
    pub n_train: usize,
    pub n_valid: usize,
    pub n_test: usize,
    pub two_tower_options: TwoTowerOptions,
    pub ranker_options: RankerOptions,
    /// Unix time (ms) the run finished: an incremental run of a child takes the events logged since.
    pub finished_at_ms: i64,
    /// An incremental run's parent and what became of its events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incremental: Option<IncrementalReport>,
}

/// `training.json`'s account of an incremental run.
#[derive(Debug, Clone, Serialize)]
pub struct IncrementalReport {
    pub parent: PathBuf,
    pub events: EventCounts,
    /// The served model's NDCG@10 minus its parent's, user by user on test (absent while tuning).
    pub test_gain_over_parent: Option<PairedDifference>,
}

/// What a run returns to the CLI.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub metrics: MetricsFile,
    pub report: RunReport,
    pub version: String,
}

pub const PROTOCOL: &str = "implicit feedback (every rating is an interaction); per-user chronological split 80/10/10 \
(train/validation/test); full ranking over all items excluding the user's train and validation items; \
metrics over test interactions at K=10 and K=20; models fitted on train, tuned on validation; user history = train";

/// What [`PROTOCOL`] adds for an incremental run.
pub const INCREMENTAL_PROTOCOL: &str = "; incremental: the events logged since the parent join train (and the \
histories), a validation or test interaction they show is history rather than a target, the parent is scored on \
the same split (parent_*)";

/// Peak resident memory of this process (Linux), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn timed<T>(stages: &mut BTreeMap<String, f64>, name: &str, stage: impl FnOnce() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    tracing::info!(stage = name, "start");
    let out = stage()?;
    let seconds = start.elapsed().as_secs_f64();
    tracing::info!(stage = name, seconds = format!("{seconds:.1}"), "done");
    stages.insert(name.to_string(), seconds);
    Ok(out)
}

/// Where reco caches big downloads and derived data: `$RECO_CACHE`, else
/// `$XDG_CACHE_HOME/reco`, else `~/.cache/reco`.
pub fn cache_root() -> PathBuf {
    if let Some(path) = std::env::var_os("RECO_CACHE") {
        return PathBuf::from(path);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("reco")
}

/// The data directory `data` names: `ml-100k` (the cache that
/// scripts/ensure-ml100k.sh fills) or a directory in the three-file layout.
pub fn resolve_data(data: &str) -> Result<PathBuf> {
    if data == "ml-100k" {
        let dir = cache_root().join("ml-100k");
        if !dir.join(".complete").exists() {
            return Err(TrainError::Options(format!(
                "MovieLens-100K is not in the cache at {}; run scripts/ensure-ml100k.sh (fetches the recbole wheel \
                 from PyPI) or pass a data directory",
                dir.display()
            )));
        }
        return Ok(dir);
    }
    let dir = PathBuf::from(data);
    if !dir.is_dir() {
        return Err(TrainError::Options(format!("{data}: not a directory (and not the name `ml-100k`)")));
    }
    Ok(dir)
}

/// Load and validate the data directory; on failure the report is also
/// written to `out/validation_report.json`.
pub fn load_dataset(data: &Path, rules: &ValidationRules, out: Option<&Path>) -> Result<(Dataset, DataStats)> {
    let layout = discover(data)?;
    tracing::info!(interactions = %layout.interactions.display(), users = ?layout.users, items = ?layout.items, "reading data");
    let tables = read_layout(&layout)?;
    match validate(&tables, rules) {
        Ok((dataset, stats)) => {
            for warning in &stats.warnings {
                tracing::warn!(file = %warning.file, column = ?warning.column, count = warning.count, examples = ?warning.examples, "{}; read as missing", warning.kind);
            }
            Ok((dataset, stats))
        }
        Err(report) => {
            if let Some(out) = out {
                std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
                write_json(out, files::VALIDATION_REPORT, &report)?;
            }
            Err(TrainError::Invalid(Box::new(report)))
        }
    }
}

/// Keep the first `n` users (and all items).
pub fn subsample_users(ds: &mut Dataset, n: usize) {
    if n >= ds.users.len() {
        return;
    }
    ds.users.truncate(n);
    ds.interactions.retain(|x| (x.user as usize) < n);
}

fn concat(first: &[Vec<Interaction>], second: &[Vec<Interaction>]) -> Vec<Vec<Interaction>> {
    first.iter().zip(second).map(|(a, b)| a.iter().chain(b).copied().collect()).collect()
}

/// The cut-offs every model is evaluated at.
const CUTOFFS: [usize; 2] = [10, 20];

/// Run the whole training pipeline.
pub fn train(options: &TrainOptions) -> Result<TrainSummary> {
    let wall = Instant::now();
    let threads = set_threads(options);
    let checkpoints = prepare_output(options)?;
    let mut stages = BTreeMap::new();
    let (dataset, stats) = load_and_validate(options, &mut stages)?;
    let parent = load_parent(options, &dataset)?;
    let inherited = parent.as_ref().map(|p| inherit_architecture(options, &p.version));
    let options = inherited.as_ref().unwrap_or(options);
    let events = parent.as_ref().map(|p| &p.events[..]).unwrap_or_default();
    let mut event_counts = parent.as_ref().map(|p| p.counts).unwrap_or_default();
    let splits = split_data(options, &dataset, events, &mut event_counts);
    let run = Run { options, dataset: &dataset, splits: &splits, checkpoints: &checkpoints };
    let mut scores = Scoreboard::new(&splits);

    scores.evaluate("popularity", &Popularity::new(&splits.features.item_train_count))?;
    let (item_item, item_item_valid) = fit_item_item(&run, &mut stages)?;
    let item_item_scorer = item_item.scorer(&splits.train);
    scores.record("item_to_item", item_item_valid, &item_item_scorer)?;
    let two_tower = fit_two_tower(&run, &mut stages)?;
    let two_tower_scorer = TwoTowerScorer::new(&two_tower.model, &splits.features, &dataset, &splits.train)?;
    scores.evaluate("two_tower", &two_tower_scorer)?;
    let history_len: Vec<usize> = splits.train.iter().map(Vec::len).collect();
    let sources = SourceSet {
        two_tower: &two_tower_scorer,
        item_item: &item_item_scorer,
        popularity: &splits.features.item_train_count,
        history_len: &history_len,
    };
    let (ranker_fit_two_tower, ranker) =
        fit_ranker(&run, &sources, two_tower.best_epoch, item_item.lambda, &mut stages)?;
    let served = Served {
        sources: &sources,
        features: &splits.features,
        ranker: &ranker.model,
        scaler: &ranker.scaler,
        value_model: ranker.value_model,
        candidates: options.ranker.clone(),
    };
    let evaluation = evaluate_served(&run, "", &served, &mut scores)?;
    let gain_over_parent = match &parent {
        Some(parent) => {
            let parent_pages = evaluate_parent(&run, &parent.version, &mut scores)?.test_pages;
            match (&evaluation.test_pages, &parent_pages, &splits.test_set) {
                (Some(child), Some(parent), Some(test)) => {
                    Some(paired_ndcg_difference(child, parent, &test.relevant, CUTOFFS[0]))
                }
                _ => None,
            }
        }
        None => None,
    };

    let metrics = scores.into_metrics(options.seed, options.incremental.is_some());
    let models = Models {
        item_item,
        two_tower,
        item_embeddings: two_tower_scorer.items,
        ranker_fit_two_tower,
        ranker,
        feature_reference: evaluation.feature_reference,
    };
    write_artifacts(&run, &stats, &models, &metrics)?;
    let mut report = run_report(&run, models, stages, threads, wall);
    report.incremental = options.incremental.as_ref().map(|i| IncrementalReport {
        parent: i.parent.clone(),
        events: event_counts,
        test_gain_over_parent: gain_over_parent,
    });
    write_json(&options.out, files::TRAINING, &report)?;
    let version = write_model_version(options, &metrics)?;
    Ok(TrainSummary { metrics, report, version })
}

/// libtorch uses every core unless told otherwise; the count goes in the report.
fn set_threads(options: &TrainOptions) -> usize {
    let threads = options.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    tch::set_num_threads(threads as i32);
    threads
}

/// Creates the output directory and returns its checkpoint directory, emptied
/// unless resuming: a fresh run must not pick up an earlier run's epochs.
fn prepare_output(options: &TrainOptions) -> Result<PathBuf> {
    std::fs::create_dir_all(&options.out).map_err(|e| TrainError::io(&options.out, e))?;
    let checkpoints = options.out.join("checkpoint");
    if !options.resume && checkpoints.exists() {
        std::fs::remove_dir_all(&checkpoints).map_err(|e| TrainError::io(&checkpoints, e))?;
    }
    Ok(checkpoints)
}

/// Bad data fails here, with its report, before any training time is spent;
/// `max_users` then cuts the data down for quick runs.
fn load_and_validate(options: &TrainOptions, stages: &mut BTreeMap<String, f64>) -> Result<(Dataset, DataStats)> {
    let (mut dataset, stats) =
        timed(stages, "load_and_validate", || load_dataset(&options.data, &options.rules, Some(&options.out)))?;
    if let Some(n) = options.max_users {
        subsample_users(&mut dataset, n);
    }
    Ok((dataset, stats))
}

/// The run's data cut in time (see [`PROTOCOL`]).
struct Splits {
    /// Train interactions of each user, chronological.
    train: Vec<Vec<Interaction>>,
    /// Fitted on train only.
    features: FeatureSpace,
    valid_set: EvalSet,
    /// `None` while tuning: test is only read to report figures.
    test_set: Option<EvalSet>,
    n_train: usize,
    n_valid: usize,
    n_test: usize,
}

/// Every model is fitted on train, tuned on validation and reported on test,
/// and features see train only, so that nothing held out leaks into a model.
fn split_data(options: &TrainOptions, dataset: &Dataset, events: &[Interaction], counts: &mut EventCounts) -> Splits {
    let split = chronological_split(dataset, [0.8, 0.1, 0.1]);
    let n_users = dataset.users.len();
    tracing::info!(
        users = n_users,
        items = dataset.items.len(),
        train = split.train.len(),
        valid = split.valid.len(),
        test = split.test.len(),
        "split"
    );
    let mut train = by_user(n_users, &split.train);
    let mut valid = by_user(n_users, &split.valid);
    let mut test = by_user(n_users, &split.test);
    if !events.is_empty() {
        incremental::fold(events, &mut train, &mut valid, &mut test, counts);
        tracing::info!(?counts, "events folded into the split");
    }
    let train_flat: Vec<Interaction> = train.iter().flatten().copied().collect();
    let features = features::fit(dataset, &train_flat, options.features);
    let train_valid = concat(&train, &valid);
    let valid_set = EvalSet::new(&train, &valid);
    let test_set = options.evaluate_test.then(|| EvalSet::new(&train_valid, &test));
    let count = |part: &[Vec<Interaction>]| part.iter().map(Vec::len).sum::<usize>();
    let (n_train, n_valid, n_test) = (train_flat.len(), count(&valid), count(&test));
    Splits { train, features, valid_set, test_set, n_train, n_valid, n_test }
}

/// What the stages after the split read.
struct Run<'a> {
    options: &'a TrainOptions,
    dataset: &'a Dataset,
    splits: &'a Splits,
    checkpoints: &'a Path,
}

type ModelMetrics = BTreeMap<String, BTreeMap<String, f64>>;

/// Validation and test metrics of every model, all on the same users and
/// cut-offs so that the models compare.
struct Scoreboard<'a> {
    splits: &'a Splits,
    validation: ModelMetrics,
    test: ModelMetrics,
}

impl<'a> Scoreboard<'a> {
    fn new(splits: &'a Splits) -> Self {
        Scoreboard { splits, validation: BTreeMap::new(), test: BTreeMap::new() }
    }

    /// Scores a model on validation, and on test unless tuning.
    fn evaluate(&mut self, name: &str, scorer: &dyn Scorer) -> Result<()> {
        let splits = self.splits;
        let validation = evaluate(scorer, &splits.valid_set, &CUTOFFS, &splits.features.item_train_count)?;
        self.record(name, validation, scorer)
    }

    /// Records validation metrics computed while tuning the model, then scores it on test unless tuning.
    fn record(&mut self, name: &str, validation: BTreeMap<String, f64>, scorer: &dyn Scorer) -> Result<()> {
        insert_metrics(&mut self.validation, name, validation);
        // Test figures are reported, never used to choose; a tuning run has none.
        if let Some(set) = &self.splits.test_set {
            let test = evaluate(scorer, set, &CUTOFFS, &self.splits.features.item_train_count)?;
            insert_metrics(&mut self.test, name, test);
        }
        Ok(())
    }

    fn into_metrics(self, seed: u64, incremental: bool) -> MetricsFile {
        let protocol = if incremental { format!("{PROTOCOL}{INCREMENTAL_PROTOCOL}") } else { PROTOCOL.into() };
        MetricsFile { protocol, models: self.test, validation: self.validation, seed }
    }
}

/// Logged as recorded, so that a long run shows each model's figures as soon as they exist.
fn insert_metrics(table: &mut ModelMetrics, name: &str, metrics: BTreeMap<String, f64>) {
    tracing::info!(
        model = name,
        ndcg_at_10 = metrics.get("ndcg@10").copied().unwrap_or(f64::NAN),
        recall_at_10 = metrics.get("recall@10").copied().unwrap_or(f64::NAN),
        "evaluated"
    );
    table.insert(name.to_string(), metrics);
}

/// Item-to-item (EASE), a baseline and a ranker source, with its L2 strength
/// chosen on validation (the first of equals wins); returns its validation metrics.
fn fit_item_item(run: &Run<'_>, stages: &mut BTreeMap<String, f64>) -> Result<(ItemItem, BTreeMap<String, f64>)> {
    let splits = run.splits;
    timed(stages, "item_to_item", || {
        let mut best: Option<(ItemItem, BTreeMap<String, f64>)> = None;
        for &lambda in &run.options.ease_lambdas {
            let model = ItemItem::fit(&splits.train, run.dataset.items.len(), lambda)?;
            let metrics =
                evaluate(&model.scorer(&splits.train), &splits.valid_set, &CUTOFFS, &splits.features.item_train_count)?;
            tracing::info!(lambda, valid_ndcg_at_10 = metrics["ndcg@10"], "item-to-item");
            if best.as_ref().is_none_or(|(_, best_metrics)| metrics["ndcg@10"] > best_metrics["ndcg@10"]) {
                best = Some((model, metrics));
            }
        }
        best.ok_or_else(|| TrainError::Options("no EASE lambda to try".into()))
    })
}

/// Two-tower on all of train, early-stopped on validation: the served
/// retrieval model and the ranker's main source.
fn fit_two_tower(run: &Run<'_>, stages: &mut BTreeMap<String, f64>) -> Result<TrainedTwoTower> {
    let (options, splits) = (run.options, run.splits);
    let parent_weights = warm_start(options, files::TWO_TOWER_WEIGHTS);
    timed(stages, "two_tower", || {
        let data = TwoTowerData {
            ds: run.dataset,
            fs: &splits.features,
            train: &splits.train,
            valid: Some(&splits.valid_set),
            warm_start: parent_weights.as_deref(),
        };
        let checkpoint = run.checkpoints.join("two_tower");
        train_two_tower(&data, &options.two_tower, options.seed, Some(&checkpoint), &options.progress, "two-tower")
    })
}

/// Each user's train history cut for the ranker: the sources it learns from
/// are refitted on the early part; the late part is its labels.
struct EarlyLate<'a> {
    early: &'a [Vec<Interaction>],
    late: &'a [Vec<Interaction>],
    /// Fitted on the early part only.
    features: &'a FeatureSpace,
    two_tower: &'a TrainedTwoTower,
}

/// The ranker must learn from positives its sources have not seen, taken
/// from train time only (validation early-stops it, test is never read), so
/// it is fitted on an early/late cut of train; returns the two-tower refitted
/// on the early part too.
fn fit_ranker(
    run: &Run<'_>,
    sources: &SourceSet<'_>,
    two_tower_epochs: usize,
    item_item_lambda: f64,
    stages: &mut BTreeMap<String, f64>,
) -> Result<(TrainedTwoTower, TrainedRanker)> {
    let options = run.options;
    let (early, late) = ranking::early_late(&run.splits.train, options.ranker_late_ratio);
    let early_flat: Vec<Interaction> = early.iter().flatten().copied().collect();
    let early_features = features::fit(run.dataset, &early_flat, options.features);
    let early_two_tower = timed(stages, "two_tower_ranker_fit", || {
        // Never warm-started: the parent's weights have seen the late part, the ranker's labels.
        let data = TwoTowerData { ds: run.dataset, fs: &early_features, train: &early, valid: None, warm_start: None };
        // Without validation to stop it, it runs as many epochs as the early-stopped two-tower kept.
        let two_tower_options = TwoTowerOptions { max_epochs: two_tower_epochs.max(1), ..options.two_tower.clone() };
        train_two_tower(
            &data,
            &two_tower_options,
            options.seed + 1,
            Some(&run.checkpoints.join("two_tower_early")),
            &options.progress,
            "two-tower (ranker fit)",
        )
    })?;
    let cut = EarlyLate { early: &early, late: &late, features: &early_features, two_tower: &early_two_tower };
    let ranker = timed(stages, "ranker", || train_ranker_on(run, &cut, sources, item_item_lambda))?;
    Ok((early_two_tower, ranker))
}

/// Training candidates come from sources fitted on the early part, as
/// served ones would be before the labels happened; validation candidates
/// come from the served `sources`.
fn train_ranker_on(
    run: &Run<'_>,
    cut: &EarlyLate<'_>,
    sources: &SourceSet<'_>,
    item_item_lambda: f64,
) -> Result<TrainedRanker> {
    let (options, dataset) = (run.options, run.dataset);
    let early_two_tower = TwoTowerScorer::new(&cut.two_tower.model, cut.features, dataset, cut.early)?;
    let early_item_item = ItemItem::fit(cut.early, dataset.items.len(), item_item_lambda)?;
    let early_item_item_scorer = early_item_item.scorer(cut.early);
    let early_len: Vec<usize> = cut.early.iter().map(Vec::len).collect();
    let label_set = ranking::label_set(cut.early, cut.late);
    let fit_sources = SourceSet {
        two_tower: &early_two_tower,
        item_item: &early_item_item_scorer,
        popularity: &cut.features.item_train_count,
        history_len: &early_len,
    };
    let fit_candidates = ranking::dense_features(&fit_sources, &label_set, &options.ranker)?;
    let valid_candidates = ranking::dense_features(sources, &run.splits.valid_set, &options.ranker)?;
    let inputs = RankerInputs::new(dataset, &run.splits.features);
    let parent_weights = warm_start(options, files::RANKER_WEIGHTS);
    let data = RankerData {
        inputs: &inputs,
        fit_sources: &early_two_tower,
        fit_candidates: &fit_candidates,
        labels: cut.late,
        valid_sources: sources.two_tower,
        valid_candidates: &valid_candidates,
        valid: &run.splits.valid_set,
        warm_start: parent_weights.as_deref(),
    };
    ranking::train_ranker(
        &data,
        &options.ranker,
        options.seed,
        Some(&run.checkpoints.join("ranker")),
        &options.progress,
    )
}

/// The served funnel: candidate sources, the ranker over their candidates, and its settings.
struct Served<'a> {
    sources: &'a SourceSet<'a>,
    /// The feature space the ranker was trained with.
    features: &'a FeatureSpace,
    ranker: &'a Ranker,
    scaler: &'a DenseScaler,
    value_model: ValueModel,
    candidates: RankerOptions,
}

/// What [`evaluate_served`] saw besides the figures.
struct ServedEvaluation {
    /// Its pages of the test users (none while tuning).
    test_pages: Option<Vec<Vec<u32>>>,
    /// The distribution of the ranker's dense features on the validation users, which the
    /// ranking service's drift monitors compare live requests with.
    feature_reference: Option<DriftReference>,
}

/// The served model, scored like the others so that the figures compare: as
/// `{prefix}two_tower_ranker`.
fn evaluate_served(
    run: &Run<'_>,
    prefix: &str,
    served: &Served<'_>,
    scores: &mut Scoreboard<'_>,
) -> Result<ServedEvaluation> {
    let splits = run.splits;
    let inputs = RankerInputs::new(run.dataset, served.features);
    let sets =
        [(true, Some(&splits.valid_set), &mut scores.validation), (false, splits.test_set.as_ref(), &mut scores.test)];
    let mut evaluation = ServedEvaluation { test_pages: None, feature_reference: None };
    for (is_validation, set, metrics) in sets {
        let Some(set) = set else { continue };
        let candidates = ranking::dense_features(served.sources, set, &served.candidates)?;
        if is_validation {
            let rows: Vec<[f32; N_DENSE]> = candidates.iter().flat_map(|c| c.dense.iter().copied()).collect();
            evaluation.feature_reference = DriftReference::fit(&rows);
        }
        let ranked = ranking::rank_candidates(
            served.ranker,
            &inputs,
            served.sources.two_tower,
            &candidates,
            served.scaler,
            served.value_model,
            20,
        )?;
        let figures = evaluate_ranked(&ranked, set, &CUTOFFS, &splits.features.item_train_count);
        insert_metrics(metrics, &format!("{prefix}two_tower_ranker"), figures);
        evaluation.test_pages = Some(ranked);
    }
    Ok(evaluation)
}

/// An incremental run's parent, with the events logged since it.
struct Parent {
    version: VersionArtifacts,
    events: Vec<Interaction>,
    counts: EventCounts,
}

/// Loads the parent of an incremental run, checks it was trained on this data set, and reads its events.
fn load_parent(options: &TrainOptions, dataset: &Dataset) -> Result<Option<Parent>> {
    let Some(incremental) = &options.incremental else { return Ok(None) };
    let version = VersionArtifacts::load(&incremental.parent).map_err(|e| {
        TrainError::Options(format!("--init-from {}: not a loadable version: {e}", incremental.parent.display()))
    })?;
    incremental::check_parent(&version, dataset)?;
    let (events, counts) = incremental::read_events(&incremental.events, dataset)?;
    tracing::info!(parent = %incremental.parent.display(), events = events.len(), "incremental run");
    Ok(Some(Parent { version, events, counts }))
}

/// An incremental run keeps its parent's architecture, features and candidate counts (its weights
/// are loaded as they are, and the child serves as it did), and its value model: the validation
/// targets the events showed became history, so what is left of validation is biased against
/// the items the parent ranked high, the ranker's strength; re-choosing the blend there would
/// choose against the ranker. Training settings stay the run's own.
fn inherit_architecture(options: &TrainOptions, parent: &VersionArtifacts) -> TrainOptions {
    let (two_tower, ranker) = (&parent.two_tower.config, &parent.ranker_file);
    let mut o = options.clone();
    o.features = parent.features.options;
    o.two_tower.embed_dim = two_tower.embed_dim;
    o.two_tower.hidden_dim = two_tower.hidden_dim;
    o.two_tower.out_dim = two_tower.out_dim;
    o.two_tower.temperature = two_tower.temperature;
    o.two_tower.dropout = two_tower.dropout;
    o.ranker.embed_dim = ranker.model.embed_dim;
    o.ranker.cross_layers = ranker.model.cross_layers;
    o.ranker.hidden_dim = ranker.model.hidden_dim;
    o.ranker.dropout = ranker.model.dropout;
    o.ranker.per_source = ranker.candidates.per_source;
    o.ranker.popular = ranker.candidates.popular;
    o.ranker.value_weights = vec![ranker.value_model.high_rating_weight];
    o.ranker.ranker_blends = vec![ranker.value_model.ranker_blend];
    o
}

/// The parent's weights file `name`, for an incremental run.
fn warm_start(options: &TrainOptions, name: &str) -> Option<PathBuf> {
    options.incremental.as_ref().map(|i| i.parent.join(name))
}

/// The parent scored as it would serve now: its own models and features, over
/// the histories this run knows (events included), as `parent_two_tower` and
/// `parent_two_tower_ranker`.
fn evaluate_parent(run: &Run<'_>, parent: &VersionArtifacts, scores: &mut Scoreboard<'_>) -> Result<ServedEvaluation> {
    let splits = run.splits;
    let two_tower = TwoTowerScorer::new(&parent.two_tower, &parent.features, run.dataset, &splits.train)?;
    scores.evaluate("parent_two_tower", &two_tower)?;
    let ranker_file = &parent.ranker_file;
    let item_item = ItemItem { weights: parent.item_item.shallow_clone(), lambda: ranker_file.item_item_lambda };
    let item_item_scorer: ItemItemScorer<'_> = item_item.scorer(&splits.train);
    let history_len: Vec<usize> = splits.train.iter().map(Vec::len).collect();
    let sources = SourceSet {
        two_tower: &two_tower,
        item_item: &item_item_scorer,
        popularity: &parent.features.item_train_count,
        history_len: &history_len,
    };
    let served = Served {
        sources: &sources,
        features: &parent.features,
        ranker: &parent.ranker,
        scaler: &ranker_file.dense_scaler,
        value_model: ranker_file.value_model,
        // The run inherited the parent's candidate counts.
        candidates: run.options.ranker.clone(),
    };
    evaluate_served(run, "parent_", &served, scores)
}

/// Every model a run fits, kept for the artifacts and the report.
struct Models {
    item_item: ItemItem,
    two_tower: TrainedTwoTower,
    /// The two-tower's embedding of every item, as retrieval serves them.
    item_embeddings: Tensor,
    /// Refitted on the early part of train for the ranker; only its log is reported.
    ranker_fit_two_tower: TrainedTwoTower,
    ranker: TrainedRanker,
    /// See [`ServedEvaluation::feature_reference`].
    feature_reference: Option<DriftReference>,
}

/// Everything the services load (weights, configs, id maps, features) and
/// the figures, next to each other in `out`.
fn write_artifacts(run: &Run<'_>, stats: &DataStats, models: &Models, metrics: &MetricsFile) -> Result<()> {
    let (options, dataset, features) = (run.options, run.dataset, &run.splits.features);
    let out = &options.out;
    let (two_tower, ranker) = (&models.two_tower, &models.ranker);
    two_tower.vs.save(out.join(files::TWO_TOWER_WEIGHTS))?;
    write_json(
        out,
        files::TWO_TOWER_CONFIG,
        &TwoTowerFile { model: two_tower.model.config.clone(), features: options.features },
    )?;
    Tensor::write_safetensors(
        &[(EMBEDDINGS_TENSOR, &models.item_embeddings.contiguous())],
        out.join(files::ITEM_EMBEDDINGS),
    )?;
    write_json(out, files::ITEM_IDS, &dataset.items.iter().map(|item| &item.id).collect::<Vec<_>>())?;
    write_json(out, files::USER_IDS, &dataset.users.iter().map(|user| &user.id).collect::<Vec<_>>())?;
    write_json(out, files::ITEMS, &dataset.items)?;
    Tensor::write_safetensors(
        &[(ITEM_ITEM_TENSOR, &models.item_item.weights.contiguous())],
        out.join(files::ITEM_ITEM_WEIGHTS),
    )?;
    ranker.vs.save(out.join(files::RANKER_WEIGHTS))?;
    write_json(
        out,
        files::RANKER_CONFIG,
        &RankerFile {
            model: ranker.model.config.clone(),
            dense_scaler: ranker.scaler.clone(),
            value_model: ranker.value_model,
            candidates: CandidateCounts { per_source: options.ranker.per_source, popular: options.ranker.popular },
            item_item_lambda: models.item_item.lambda,
            feature_reference: models.feature_reference.clone(),
        },
    )?;
    write_json(out, files::FEATURES, features)?;
    write_json(out, files::FEATURE_STATS, &serde_json::json!({ "data": stats, "features": features.summary() }))?;
    write_json(out, files::METRICS, metrics)
}

/// The artifacts' `manifest.json` (every file's sha256), then the
/// `ModelVersion` that deploys this run: it carries the served model's test
/// figures and the digest of that manifest. Returns the version's name.
fn write_model_version(options: &TrainOptions, metrics: &MetricsFile) -> Result<String> {
    let out = &options.out;
    let digest = reco_artifacts::manifest::write_manifest(out)?;
    let version = match &options.version {
        Some(version) => version.clone(),
        None => format!("{}-s{}", options.pipeline, options.seed),
    };
    let uri = match &options.artifact_uri {
        Some(uri) => uri.clone(),
        None => {
            let abs = std::fs::canonicalize(out).map_err(|e| TrainError::io(out, e))?;
            format!("file://{}", abs.display())
        }
    };
    let served = metrics.models.get("two_tower_ranker").cloned().unwrap_or_default();
    let manifest = artifacts::model_version(
        &version,
        options.namespace.as_deref(),
        &options.pipeline,
        &uri,
        &digest,
        &served,
        options.image.as_deref(),
    )?;
    write_yaml(out, files::MODEL_VERSION, &manifest)?;
    Ok(version)
}

/// `training.json`: where the time and memory went and what early stopping
/// and tuning chose, to compare runs.
fn run_report(
    run: &Run<'_>,
    models: Models,
    stages: BTreeMap<String, f64>,
    threads: usize,
    wall: Instant,
) -> RunReport {
    let (options, splits) = (run.options, run.splits);
    RunReport {
        seed: options.seed,
        wall_seconds: wall.elapsed().as_secs_f64(),
        stage_seconds: stages,
        two_tower_epochs: models.two_tower.epochs,
        two_tower_best_epoch: models.two_tower.best_epoch,
        ranker_fit_two_tower_epochs: models.ranker_fit_two_tower.epochs,
        ranker_best_epoch: models.ranker.best_epoch,
        ranker_value_model: models.ranker.value_model,
        ease_lambda: models.item_item.lambda,
        peak_rss_mib: peak_rss_mib(),
        threads,
        n_users: run.dataset.users.len(),
        n_items: run.dataset.items.len(),
        n_train: splits.n_train,
        n_valid: splits.n_valid,
        n_test: splits.n_test,
        two_tower_options: options.two_tower.clone(),
        ranker_options: options.ranker.clone(),
        finished_at_ms: reco_runtime::clock::unix_ms(),
        incremental: None,
    }
}
