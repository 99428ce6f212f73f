//! `reco train` end to end: read and validate the data, split it, fit
//! features and every model, evaluate all of them on the same test users,
//! and write the artifacts. The only module here that sequences I/O with
//! training; every step it calls is tested on its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use tch::Tensor;

use reco_model::artifacts::{CandidateCounts, EMBEDDINGS_TENSOR, ITEM_ITEM_TENSOR, RankerFile, TwoTowerFile};

use crate::artifacts::{self, MetricsFile, files, write_json, write_yaml};
use crate::error::{Result, TrainError};
use crate::eval::{EvalSet, Scorer, evaluate, evaluate_ranked};
use crate::features::{self, FeatureOptions};
use crate::progress::Progress;
use crate::ranking::{self, RankerData, RankerInputs, RankerOptions, SourceSet};
use crate::retrieval::{EpochLog, TwoTowerData, TwoTowerOptions, train_two_tower};
use crate::sources::{ItemItem, Popularity, TwoTowerScorer};
use crate::split::{by_user, chronological_split};
use crate::table::{discover, read_layout};
use crate::validate::{Dataset, Interaction, ValidationRules, validate};

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

/// Peak resident memory of this process (Linux), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn timed<T>(stages: &mut BTreeMap<String, f64>, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    tracing::info!(stage = name, "start");
    let out = f()?;
    let s = start.elapsed().as_secs_f64();
    tracing::info!(stage = name, seconds = format!("{s:.1}"), "done");
    stages.insert(name.to_string(), s);
    Ok(out)
}

/// Where reco caches big downloads and derived data: `$RECO_CACHE`, else
/// `$XDG_CACHE_HOME/reco`, else `~/.cache/reco`.
pub fn cache_root() -> PathBuf {
    if let Some(p) = std::env::var_os("RECO_CACHE") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
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
pub fn load_dataset(
    data: &Path,
    rules: &ValidationRules,
    out: Option<&Path>,
) -> Result<(Dataset, crate::validate::DataStats)> {
    let layout = discover(data)?;
    tracing::info!(interactions = %layout.interactions.display(), users = ?layout.users, items = ?layout.items, "reading data");
    let tables = read_layout(&layout)?;
    match validate(&tables, rules) {
        Ok(x) => {
            for w in &x.1.warnings {
                tracing::warn!(file = %w.file, column = ?w.column, count = w.count, examples = ?w.examples, "{}; read as missing", w.kind);
            }
            Ok(x)
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

fn concat(a: &[Vec<Interaction>], b: &[Vec<Interaction>]) -> Vec<Vec<Interaction>> {
    a.iter().zip(b).map(|(x, y)| x.iter().chain(y).copied().collect()).collect()
}

fn named(metrics: &mut BTreeMap<String, BTreeMap<String, f64>>, name: &str, m: BTreeMap<String, f64>) {
    tracing::info!(
        model = name,
        ndcg_at_10 = m.get("ndcg@10").copied().unwrap_or(f64::NAN),
        recall_at_10 = m.get("recall@10").copied().unwrap_or(f64::NAN),
        "evaluated"
    );
    metrics.insert(name.to_string(), m);
}

/// Run the whole training pipeline.
pub fn train(o: &TrainOptions) -> Result<TrainSummary> {
    let wall = Instant::now();
    let threads = o.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    tch::set_num_threads(threads as i32);
    std::fs::create_dir_all(&o.out).map_err(|e| TrainError::io(&o.out, e))?;
    let checkpoints = o.out.join("checkpoint");
    if !o.resume && checkpoints.exists() {
        std::fs::remove_dir_all(&checkpoints).map_err(|e| TrainError::io(&checkpoints, e))?;
    }
    let mut stages = BTreeMap::new();
    let ks = [10usize, 20];

    let (mut ds, stats) = timed(&mut stages, "load_and_validate", || load_dataset(&o.data, &o.rules, Some(&o.out)))?;
    if let Some(n) = o.max_users {
        subsample_users(&mut ds, n);
    }
    let split = chronological_split(&ds, [0.8, 0.1, 0.1]);
    let n_users = ds.users.len();
    let n_items = ds.items.len();
    tracing::info!(
        users = n_users,
        items = n_items,
        train = split.train.len(),
        valid = split.valid.len(),
        test = split.test.len(),
        "split"
    );
    let train = by_user(n_users, &split.train);
    let valid = by_user(n_users, &split.valid);
    let test = by_user(n_users, &split.test);
    let fs = features::fit(&ds, &split.train, o.features);
    let train_valid = concat(&train, &valid);
    let valid_set = EvalSet::new(&train, &valid);
    let test_set = o.evaluate_test.then(|| EvalSet::new(&train_valid, &test));
    let pop = &fs.item_train_count;

    let mut test_metrics = BTreeMap::new();
    let mut valid_metrics = BTreeMap::new();
    // Test figures are reported, never used to choose; a tuning run has none.
    let mut report_test = |name: &str, scorer: &dyn Scorer| -> Result<()> {
        if let Some(set) = &test_set {
            named(&mut test_metrics, name, evaluate(scorer, set, &ks, pop)?);
        }
        Ok(())
    };

    // Most popular.
    let popularity = Popularity::new(pop);
    named(&mut valid_metrics, "popularity", evaluate(&popularity, &valid_set, &ks, pop)?);
    report_test("popularity", &popularity)?;

    // Item-to-item (EASE), λ tuned on validation.
    let (ease, ease_valid) = timed(&mut stages, "item_to_item", || {
        let mut best: Option<(ItemItem, BTreeMap<String, f64>)> = None;
        for &lambda in &o.ease_lambdas {
            let m = ItemItem::fit(&train, n_items, lambda)?;
            let metrics = evaluate(&m.scorer(&train), &valid_set, &ks, pop)?;
            tracing::info!(lambda, valid_ndcg_at_10 = metrics["ndcg@10"], "item-to-item");
            if best.as_ref().is_none_or(|b| metrics["ndcg@10"] > b.1["ndcg@10"]) {
                best = Some((m, metrics));
            }
        }
        best.ok_or_else(|| TrainError::Options("no EASE lambda to try".into()))
    })?;
    let ease_scorer = ease.scorer(&train);
    named(&mut valid_metrics, "item_to_item", ease_valid);
    report_test("item_to_item", &ease_scorer)?;

    // Two-tower on all of train, early-stopped on validation.
    let tt = timed(&mut stages, "two_tower", || {
        let data = TwoTowerData { ds: &ds, fs: &fs, train: &train, valid: Some(&valid_set) };
        train_two_tower(&data, &o.two_tower, o.seed, Some(&checkpoints.join("two_tower")), &o.progress, "two-tower")
    })?;
    let tt_scorer = TwoTowerScorer::new(&tt.model, &fs, &ds, &train)?;
    named(&mut valid_metrics, "two_tower", evaluate(&tt_scorer, &valid_set, &ks, pop)?);
    report_test("two_tower", &tt_scorer)?;

    // Ranker: sources refitted on the early part of train, labels from the late part.
    let (early, late) = ranking::early_late(&train, o.ranker_late_ratio);
    let early_flat: Vec<Interaction> = early.iter().flatten().copied().collect();
    let fs_early = features::fit(&ds, &early_flat, o.features);
    let tt_early = timed(&mut stages, "two_tower_ranker_fit", || {
        let data = TwoTowerData { ds: &ds, fs: &fs_early, train: &early, valid: None };
        let opts = TwoTowerOptions { max_epochs: tt.best_epoch.max(1), ..o.two_tower.clone() };
        train_two_tower(
            &data,
            &opts,
            o.seed + 1,
            Some(&checkpoints.join("two_tower_early")),
            &o.progress,
            "two-tower (ranker fit)",
        )
    })?;
    let ranker = timed(&mut stages, "ranker", || {
        let tt_early_scorer = TwoTowerScorer::new(&tt_early.model, &fs_early, &ds, &early)?;
        let ease_early = ItemItem::fit(&early, n_items, ease.lambda)?;
        let ease_early_scorer = ease_early.scorer(&early);
        let early_len: Vec<usize> = early.iter().map(Vec::len).collect();
        let label_set = ranking::label_set(&early, &late);
        let fit_src = SourceSet {
            two_tower: &tt_early_scorer,
            item_item: &ease_early_scorer,
            popularity: &fs_early.item_train_count,
            history_len: &early_len,
        };
        let fit_candidates = ranking::dense_features(&fit_src, &label_set, &o.ranker)?;
        let train_len: Vec<usize> = train.iter().map(Vec::len).collect();
        let valid_src =
            SourceSet { two_tower: &tt_scorer, item_item: &ease_scorer, popularity: pop, history_len: &train_len };
        let valid_candidates = ranking::dense_features(&valid_src, &valid_set, &o.ranker)?;
        let inputs = RankerInputs::new(&ds, &fs);
        let data = RankerData {
            inputs: &inputs,
            fit_sources: &tt_early_scorer,
            fit_candidates: &fit_candidates,
            labels: &late,
            valid_sources: &tt_scorer,
            valid_candidates: &valid_candidates,
            valid: &valid_set,
        };
        ranking::train_ranker(&data, &o.ranker, o.seed, Some(&checkpoints.join("ranker")), &o.progress)
    })?;
    let train_len: Vec<usize> = train.iter().map(Vec::len).collect();
    let served_src =
        SourceSet { two_tower: &tt_scorer, item_item: &ease_scorer, popularity: pop, history_len: &train_len };
    let inputs = RankerInputs::new(&ds, &fs);
    for (set, target) in [(Some(&valid_set), &mut valid_metrics), (test_set.as_ref(), &mut test_metrics)] {
        let Some(set) = set else { continue };
        let cands = ranking::dense_features(&served_src, set, &o.ranker)?;
        let ranked = ranking::rank_candidates(
            &ranker.model,
            &inputs,
            &tt_scorer,
            &cands,
            &ranker.scaler,
            ranker.value_model,
            20,
        )?;
        named(target, "two_tower_ranker", evaluate_ranked(&ranked, set, &ks, pop));
    }

    // Artifacts.
    let out = &o.out;
    tt.vs.save(out.join(files::TWO_TOWER_WEIGHTS))?;
    write_json(out, files::TWO_TOWER_CONFIG, &TwoTowerFile { model: tt.model.config.clone(), features: o.features })?;
    Tensor::write_safetensors(&[(EMBEDDINGS_TENSOR, &tt_scorer.items.contiguous())], out.join(files::ITEM_EMBEDDINGS))?;
    write_json(out, files::ITEM_IDS, &ds.items.iter().map(|i| &i.id).collect::<Vec<_>>())?;
    write_json(out, files::USER_IDS, &ds.users.iter().map(|u| &u.id).collect::<Vec<_>>())?;
    write_json(out, files::ITEMS, &ds.items)?;
    Tensor::write_safetensors(&[(ITEM_ITEM_TENSOR, &ease.weights.contiguous())], out.join(files::ITEM_ITEM_WEIGHTS))?;
    ranker.vs.save(out.join(files::RANKER_WEIGHTS))?;
    write_json(
        out,
        files::RANKER_CONFIG,
        &RankerFile {
            model: ranker.model.config.clone(),
            dense_scaler: ranker.scaler.clone(),
            value_model: ranker.value_model,
            candidates: CandidateCounts { per_source: o.ranker.per_source, popular: o.ranker.popular },
            item_item_lambda: ease.lambda,
        },
    )?;
    write_json(out, files::FEATURES, &fs)?;
    write_json(out, files::FEATURE_STATS, &serde_json::json!({ "data": stats, "features": fs.summary() }))?;
    let metrics =
        MetricsFile { protocol: PROTOCOL.into(), models: test_metrics, validation: valid_metrics, seed: o.seed };
    write_json(out, files::METRICS, &metrics)?;

    let version = match &o.version {
        Some(v) => v.clone(),
        None => format!("{}-s{}", o.pipeline, o.seed),
    };
    let uri = match &o.artifact_uri {
        Some(u) => u.clone(),
        None => {
            let abs = std::fs::canonicalize(out).map_err(|e| TrainError::io(out, e))?;
            format!("file://{}", abs.display())
        }
    };
    let served = metrics.models.get("two_tower_ranker").cloned().unwrap_or_default();
    let mv =
        artifacts::model_version(&version, o.namespace.as_deref(), &o.pipeline, &uri, &served, o.image.as_deref())?;
    write_yaml(out, files::MODEL_VERSION, &mv)?;

    let report = RunReport {
        seed: o.seed,
        wall_seconds: wall.elapsed().as_secs_f64(),
        stage_seconds: stages,
        two_tower_epochs: tt.epochs,
        two_tower_best_epoch: tt.best_epoch,
        ranker_fit_two_tower_epochs: tt_early.epochs,
        ranker_best_epoch: ranker.best_epoch,
        ranker_value_model: ranker.value_model,
        ease_lambda: ease.lambda,
        peak_rss_mib: peak_rss_mib(),
        threads,
        n_users,
        n_items,
        n_train: split.train.len(),
        n_valid: split.valid.len(),
        n_test: split.test.len(),
        two_tower_options: o.two_tower.clone(),
        ranker_options: o.ranker.clone(),
    };
    write_json(out, files::TRAINING, &report)?;
    Ok(TrainSummary { metrics, report, version })
}
