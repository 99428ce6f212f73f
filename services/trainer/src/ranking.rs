//! The ranking stage: candidate generation from the sources, ranker features
//! (source scores and ranks, popularity, two-tower embeddings), multi-task
//! training (interaction; high rating ≥ 4) and the served ranking.
//!
//! The ranker learns from held-out positives taken from train time only: each
//! user's train history is cut into an early part, on which a second set of
//! sources is fitted, and a late part whose items are the labels. Validation
//! tunes it (early stopping, value-model weight); test is never read here.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use reco_model::scoring::{self, DenseScaler, N_DENSE, SourceEvidence, ValueModel};
use reco_model::{Ranker, RankerBatch, RankerConfig, RankerOutput, pad_bags};
use serde::{Deserialize, Serialize};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Tensor};

use crate::early_stopping::EarlyStopping;
use crate::error::Result;
use crate::eval::{EvalSet, Scorer, evaluate_ranked, top_k};
use crate::features::FeatureSpace;
use crate::progress::Progress;
use crate::sources::{ItemItemScorer, TwoTowerScorer};
use crate::validate::{Dataset, Interaction};

/// Hyper-parameters of candidate generation and the ranker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankerOptions {
    /// Candidates taken from each of the two-tower and item-to-item sources.
    pub per_source: usize,
    /// Candidates taken from the popularity source.
    pub popular: usize,
    pub embed_dim: i64,
    pub cross_layers: i64,
    pub hidden_dim: i64,
    pub dropout: f64,
    pub learning_rate: f64,
    pub batch_size: usize,
    pub max_epochs: usize,
    pub patience: usize,
    /// Values of the high-rating weight of the value model tried on validation.
    pub value_weights: Vec<f64>,
    /// Ranker / two-tower blends tried on validation (see [`ValueModel`]).
    pub ranker_blends: Vec<f64>,
}

impl Default for RankerOptions {
    fn default() -> Self {
        RankerOptions {
            per_source: 100,
            popular: 50,
            embed_dim: 16,
            cross_layers: 2,
            hidden_dim: 128,
            dropout: 0.1,
            learning_rate: 2e-3,
            batch_size: 1024,
            max_epochs: 8,
            patience: 2,
            value_weights: vec![0.0, 0.5, 1.0],
            ranker_blends: vec![1.0, 0.75, 0.5, 0.25, 0.0],
        }
    }
}

/// The sources a ranking run reads, all fitted on the same history.
pub struct SourceSet<'a> {
    pub two_tower: &'a TwoTowerScorer,
    pub item_item: &'a ItemItemScorer<'a>,
    /// Train count per item.
    pub popularity: &'a [u32],
    /// Length of the history each source was given, per user.
    pub history_len: &'a [usize],
}

/// Candidates of one user with their dense features.
#[derive(Debug, Clone)]
pub struct UserCandidates {
    pub user: u32,
    pub items: Vec<u32>,
    pub dense: Vec<[f32; N_DENSE]>,
}

/// Candidates (union of the sources' top lists, known items excluded) with
/// dense features: two-tower and item-to-item scores, log popularity, the
/// three sources' rank weights `1/log2(2+rank)`, log history length, and the
/// two scores standardised within the user's candidates.
pub fn dense_features(src: &SourceSet<'_>, set: &EvalSet, options: &RankerOptions) -> Result<Vec<UserCandidates>> {
    let pop_scorer = crate::sources::Popularity::new(src.popularity);
    let tt_top = top_k(src.two_tower, set, options.per_source)?;
    let ii_top = top_k(src.item_item, set, options.per_source)?;
    let pop_top = top_k(&pop_scorer, set, options.popular)?;
    let mut out = Vec::with_capacity(set.users.len());
    for (r, &user) in set.users.iter().enumerate() {
        let mut items: Vec<u32> = tt_top[r].iter().chain(&ii_top[r]).chain(&pop_top[r]).copied().collect();
        items.sort_unstable();
        items.dedup();
        let rank_of = |list: &[u32]| -> HashMap<u32, usize> { list.iter().enumerate().map(|(i, &x)| (x, i)).collect() };
        let (tr, ir, pr) = (rank_of(&tt_top[r]), rank_of(&ii_top[r]), rank_of(&pop_top[r]));
        let idx = Tensor::from_slice(&items.iter().map(|&i| i as i64).collect::<Vec<_>>());
        let tt = Vec::<f32>::try_from(src.two_tower.scores(&[user])?.select(0, 0).index_select(0, &idx))?;
        let ii = Vec::<f32>::try_from(src.item_item.scores(&[user])?.select(0, 0).index_select(0, &idx))?;
        let evidence: Vec<SourceEvidence> = items
            .iter()
            .enumerate()
            .map(|(j, item)| SourceEvidence {
                two_tower_score: tt[j],
                item_to_item_score: ii[j],
                train_count: src.popularity[*item as usize],
                two_tower_rank: tr.get(item).copied(),
                item_to_item_rank: ir.get(item).copied(),
                popular_rank: pr.get(item).copied(),
            })
            .collect();
        let dense = scoring::dense_features(&evidence, src.history_len[user as usize]);
        out.push(UserCandidates { user, items, dense });
    }
    Ok(out)
}

/// A trained ranker with what serving needs to use it.
#[derive(Debug)]
pub struct TrainedRanker {
    pub vs: nn::VarStore,
    pub model: Ranker,
    pub scaler: DenseScaler,
    pub value_model: ValueModel,
    pub best_epoch: usize,
    pub best_valid_ndcg_at_10: f64,
}

/// Inputs for the ranker from the two-tower embeddings and the feature space.
pub struct RankerInputs<'a> {
    pub ds: &'a Dataset,
    pub fs: &'a FeatureSpace,
    pub genres: Vec<Vec<i64>>,
}

impl<'a> RankerInputs<'a> {
    pub fn new(ds: &'a Dataset, fs: &'a FeatureSpace) -> Self {
        let genres = fs.item_batch(&ds.items).genres;
        RankerInputs { ds, fs, genres }
    }

    fn batch(&self, tt: &TwoTowerScorer, rows: &[CandidateRow<'_>], scaler: &DenseScaler) -> RankerBatch {
        let users = Tensor::from_slice(&rows.iter().map(|row| row.user as i64).collect::<Vec<_>>());
        let items = Tensor::from_slice(&rows.iter().map(|row| row.item as i64).collect::<Vec<_>>());
        let dense = scaler.apply(rows.iter().map(|row| row.dense));
        let user = |f: &dyn Fn(u32) -> i64| Tensor::from_slice(&rows.iter().map(|row| f(row.user)).collect::<Vec<_>>());
        let ds = self.ds;
        let fs = self.fs;
        RankerBatch {
            user_emb: tt.users.index_select(0, &users),
            item_emb: tt.items.index_select(0, &items),
            dense: Tensor::from_slice(&dense).view([rows.len() as i64, N_DENSE as i64]),
            item: &items + 1,
            occupation: user(&|u| fs.occupations.index(ds.users[u as usize].occupation.as_deref())),
            age: user(&|u| FeatureSpace::age_bucket(ds.users[u as usize].age)),
            gender: user(&|u| fs.genders.index(ds.users[u as usize].gender.as_deref())),
            genres: pad_bags(&rows.iter().map(|row| self.genres[row.item as usize].clone()).collect::<Vec<_>>()),
        }
    }
}

/// One (user, candidate item) pair with its dense features: a ranker input row.
#[derive(Debug, Clone, Copy)]
struct CandidateRow<'a> {
    user: u32,
    item: u32,
    dense: &'a [f32; N_DENSE],
}

/// Ranker outputs for every candidate of every user (logits `[n, tasks]`).
pub fn score_candidates(
    ranker: &Ranker,
    inputs: &RankerInputs<'_>,
    tt: &TwoTowerScorer,
    cands: &[UserCandidates],
    scaler: &DenseScaler,
) -> Vec<RankerOutput> {
    cands
        .iter()
        .map(|candidates| {
            let rows: Vec<CandidateRow<'_>> = candidates
                .items
                .iter()
                .zip(&candidates.dense)
                .map(|(&item, dense)| CandidateRow { user: candidates.user, item, dense })
                .collect();
            let batch = inputs.batch(tt, &rows, scaler);
            tch::no_grad(|| ranker.forward(&batch, false))
        })
        .collect()
}

/// Per-user ranked lists of length `k` under the value model `vm`.
pub fn rank_by_value(
    outputs: &[RankerOutput],
    cands: &[UserCandidates],
    vm: ValueModel,
    k: usize,
) -> Result<Vec<Vec<u32>>> {
    let mut out = Vec::with_capacity(cands.len());
    for (c, output) in cands.iter().zip(outputs) {
        let v = Vec::<f32>::try_from(output.value(vm.high_rating_weight))?;
        let tt: Vec<f32> = c.dense.iter().map(|d| d[0]).collect();
        let s = vm.served_scores(&v, &tt);
        let mut order: Vec<usize> = (0..c.items.len()).collect();
        order.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(c.items[a].cmp(&c.items[b])));
        out.push(order.into_iter().take(k).map(|j| c.items[j]).collect());
    }
    Ok(out)
}

/// Ranker scores of every candidate, as per-user ranked lists of length `k`.
pub fn rank_candidates(
    ranker: &Ranker,
    inputs: &RankerInputs<'_>,
    tt: &TwoTowerScorer,
    cands: &[UserCandidates],
    scaler: &DenseScaler,
    vm: ValueModel,
    k: usize,
) -> Result<Vec<Vec<u32>>> {
    rank_by_value(&score_candidates(ranker, inputs, tt, cands, scaler), cands, vm, k)
}

/// Training material for the ranker.
pub struct RankerData<'a> {
    pub inputs: &'a RankerInputs<'a>,
    /// Sources fitted on the early part of train, with their candidates.
    pub fit_sources: &'a TwoTowerScorer,
    pub fit_candidates: &'a [UserCandidates],
    /// Late part of each user's train history: the labels.
    pub labels: &'a [Vec<Interaction>],
    /// Sources fitted on all of train, candidates for validation users.
    pub valid_sources: &'a TwoTowerScorer,
    pub valid_candidates: &'a [UserCandidates],
    pub valid: &'a EvalSet,
    /// Weights to start from (a parent version's `ranker.safetensors`) instead of random ones.
    pub warm_start: Option<&'a Path>,
}

pub fn ranker_config(fs: &FeatureSpace, ds: &Dataset, tower_dim: i64, options: &RankerOptions) -> RankerConfig {
    RankerConfig {
        tower_dim,
        n_dense: N_DENSE as i64,
        n_items: ds.items.len() as i64 + 1,
        n_genres: fs.genres.size(),
        n_occupations: fs.occupations.size(),
        n_ages: fs.n_ages(),
        n_genders: fs.genders.size(),
        embed_dim: options.embed_dim,
        cross_layers: options.cross_layers,
        hidden_dim: options.hidden_dim,
        dropout: options.dropout,
        tasks: vec!["interaction".into(), "high_rating".into()],
    }
}

/// Resume state of the ranker loop, written after every epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RankerCheckpoint {
    epoch: usize,
    /// Best validation NDCG@10 so far (`None` before the first epoch).
    best: Option<f64>,
    best_epoch: usize,
    best_value_model: ValueModel,
    epochs_without_gain: usize,
    options: RankerOptions,
    seed: u64,
}

/// Train the multi-task ranker with early stopping on validation NDCG@10;
/// `checkpoint` (a directory) enables resume, as for the two-tower.
pub fn train_ranker(
    data: &RankerData<'_>,
    options: &RankerOptions,
    seed: u64,
    checkpoint: Option<&Path>,
    progress: &Progress,
) -> Result<TrainedRanker> {
    let tower_dim = data.fit_sources.users.size()[1];
    let config = ranker_config(data.inputs.fs, data.inputs.ds, tower_dim, options);
    tch::manual_seed(seed as i64 + 17);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = Ranker::new(&vs.root(), config.clone());
    if let Some(weights) = data.warm_start {
        crate::checkpoint::warm_start(&mut vs, weights)?;
    }
    let mut best_vs = nn::VarStore::new(Device::Cpu);
    let best_model = Ranker::new(&best_vs.root(), config);
    best_vs.copy(&vs)?;
    let mut optimizer = nn::Adam::default().build(&vs, options.learning_rate)?;
    let scaler = DenseScaler::fit(data.fit_candidates.iter().flat_map(|c| &c.dense));
    let mut rows = training_rows(data);

    let mut state = RankerCheckpoint {
        epoch: 0,
        best: None,
        best_epoch: 0,
        best_value_model: ValueModel { high_rating_weight: 0.0, ranker_blend: 1.0 },
        epochs_without_gain: 0,
        options: options.clone(),
        seed,
    };
    if let Some(dir) = checkpoint
        && let Some(saved) = crate::checkpoint::load(dir, &mut vs, &mut best_vs, |s: &RankerCheckpoint| {
            s.options == *options && s.seed == seed
        })?
    {
        tracing::info!(epoch = saved.epoch, "resuming ranker training from checkpoint");
        state = saved;
    }
    let trainer = RankerEpochs { data, options, seed, scaler: &scaler, progress };
    // Copied back into `state` after every epoch: the checkpoint keeps its own field names, so that checkpoints
    // written before still resume.
    let mut stopping = EarlyStopping {
        patience: options.patience,
        best: state.best,
        best_epoch: state.best_epoch,
        bad_epochs: state.epochs_without_gain,
    };
    while state.epoch < options.max_epochs && !stopping.should_stop() {
        let epoch = state.epoch + 1;
        let loss = trainer.train_epoch(&model, &mut optimizer, &mut rows, epoch);
        let (valid_ndcg, value_model) = trainer.best_value_model(&model, state.best_value_model)?;
        tracing::info!(
            epoch,
            loss,
            valid_ndcg_at_10 = valid_ndcg,
            high_rating_weight = value_model.high_rating_weight,
            ranker_blend = value_model.ranker_blend,
            "ranker epoch"
        );
        state.epoch = epoch;
        if stopping.observe(epoch, Some(valid_ndcg)) {
            state.best_value_model = value_model;
            best_vs.copy(&vs)?;
        }
        (state.best, state.best_epoch, state.epochs_without_gain) =
            (stopping.best, stopping.best_epoch, stopping.bad_epochs);
        if let Some(dir) = checkpoint {
            crate::checkpoint::save(dir, epoch, &state, &vs, &best_vs)?;
        }
    }
    Ok(TrainedRanker {
        vs: best_vs,
        model: best_model,
        scaler,
        value_model: state.best_value_model,
        best_epoch: state.best_epoch,
        best_valid_ndcg_at_10: state.best.unwrap_or(f64::NEG_INFINITY),
    })
}

/// A ranker training row: a fit candidate and its two task labels.
struct LabelledRow<'a> {
    candidate: CandidateRow<'a>,
    /// 1 when the item is in the user's labels.
    interaction: f32,
    /// 1 when the user also rated it high (≥ 4).
    high_rating: f32,
}

/// Every fit candidate of the users that have labels; users without any
/// would only add negatives.
fn training_rows<'a>(data: &RankerData<'a>) -> Vec<LabelledRow<'a>> {
    let mut rows = Vec::new();
    for candidates in data.fit_candidates {
        let ratings: HashMap<u32, f32> =
            data.labels[candidates.user as usize].iter().map(|x| (x.item, x.rating)).collect();
        if ratings.is_empty() {
            continue;
        }
        for (&item, dense) in candidates.items.iter().zip(&candidates.dense) {
            let (interaction, high_rating) = match ratings.get(&item) {
                Some(&rating) => (1.0, if rating >= 4.0 { 1.0 } else { 0.0 }),
                None => (0.0, 0.0),
            };
            let candidate = CandidateRow { user: candidates.user, item, dense };
            rows.push(LabelledRow { candidate, interaction, high_rating });
        }
    }
    let positives = rows.iter().filter(|row| row.interaction > 0.0).count();
    tracing::info!(rows = rows.len(), positives, "ranker training rows");
    rows
}

/// What every ranker epoch reads.
struct RankerEpochs<'a> {
    data: &'a RankerData<'a>,
    options: &'a RankerOptions,
    seed: u64,
    scaler: &'a DenseScaler,
    progress: &'a Progress,
}

impl RankerEpochs<'_> {
    /// One pass over the rows; returns the mean batch loss.
    fn train_epoch(
        &self,
        model: &Ranker,
        optimizer: &mut nn::Optimizer,
        rows: &mut [LabelledRow<'_>],
        epoch: usize,
    ) -> f64 {
        let mut rng = StdRng::seed_from_u64(self.seed.wrapping_mul(7_919).wrapping_add(epoch as u64));
        tch::manual_seed(self.seed as i64 * 7_919 + epoch as i64);
        // From the canonical (user, item) order: the permutation depends on (seed, epoch) only (see the two-tower).
        rows.sort_unstable_by_key(|row| (row.candidate.user, row.candidate.item));
        rows.shuffle(&mut rng);
        let bar = self.progress.bar(rows.len() as u64, &format!("ranker epoch {epoch}"));
        let mut loss_sum = 0.0;
        let mut batches = 0;
        for chunk in rows.chunks(self.options.batch_size) {
            let candidates: Vec<CandidateRow<'_>> = chunk.iter().map(|row| row.candidate).collect();
            let batch = self.data.inputs.batch(self.data.fit_sources, &candidates, self.scaler);
            let labels: Vec<f32> = chunk.iter().flat_map(|row| [row.interaction, row.high_rating]).collect();
            let labels = Tensor::from_slice(&labels).view([-1, 2]);
            let logits = model.forward(&batch, true).logits;
            let loss = logits.binary_cross_entropy_with_logits::<Tensor>(&labels, None, None, tch::Reduction::Mean);
            optimizer.backward_step(&loss);
            loss_sum += loss.double_value(&[]);
            batches += 1;
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        loss_sum / batches.max(1) as f64
    }

    /// How serving weighs the tasks and blends in the two-tower score is
    /// tuned on validation with each epoch's ranker: the value model with the
    /// best NDCG@10 (the first of equals; `fallback` when none beats minus
    /// infinity), with that NDCG.
    fn best_value_model(&self, model: &Ranker, fallback: ValueModel) -> Result<(f64, ValueModel)> {
        let data = self.data;
        let (mut best_ndcg, mut best_value_model) = (f64::NEG_INFINITY, fallback);
        let outputs = score_candidates(model, data.inputs, data.valid_sources, data.valid_candidates, self.scaler);
        for &high_rating_weight in &self.options.value_weights {
            for &ranker_blend in &self.options.ranker_blends {
                let value_model = ValueModel { high_rating_weight, ranker_blend };
                let ranked = rank_by_value(&outputs, data.valid_candidates, value_model, 10)?;
                let ndcg = evaluate_ranked(&ranked, data.valid, &[10], &data.inputs.fs.item_train_count)["ndcg@10"];
                if ndcg > best_ndcg {
                    (best_ndcg, best_value_model) = (ndcg, value_model);
                }
            }
        }
        Ok((best_ndcg, best_value_model))
    }
}

/// Split each user's train history into an early part (fitting the ranker's
/// sources) and a late part (its labels): the last `late_ratio` share, at
/// least one interaction when the user has two or more.
pub fn early_late(train: &[Vec<Interaction>], late_ratio: f64) -> (Vec<Vec<Interaction>>, Vec<Vec<Interaction>>) {
    train
        .iter()
        .map(|h| {
            let late = if h.len() >= 2 { ((h.len() as f64 * late_ratio) as usize).max(1) } else { 0 };
            let cut = h.len() - late;
            (h[..cut].to_vec(), h[cut..].to_vec())
        })
        .unzip()
}

/// Users whose labels are non-empty, with their early items excluded.
pub fn label_set(early: &[Vec<Interaction>], late: &[Vec<Interaction>]) -> EvalSet {
    EvalSet::new(early, late)
}

/// Whether any served item is in the user's known items (used by tests).
pub fn leaks_known(ranked: &[Vec<u32>], set: &EvalSet) -> bool {
    ranked.iter().zip(&set.exclude).any(|(r, ex)| {
        let ex: HashSet<&u32> = ex.iter().collect();
        r.iter().any(|i| ex.contains(i))
    })
}

/// Write the ranker weights.
pub fn save_ranker(ranker: &TrainedRanker, path: &Path) -> Result<()> {
    ranker.vs.save(path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(item: u32) -> Interaction {
        Interaction { user: 0, item, rating: 4.0, timestamp: item as i64 }
    }

    #[test]
    fn early_late_keeps_order_and_holds_out_the_newest() {
        let train = vec![(0..10).map(x).collect::<Vec<_>>(), vec![x(1)], vec![x(1), x(2)]];
        let (early, late) = early_late(&train, 0.2);
        assert_eq!(late[0].iter().map(|i| i.item).collect::<Vec<_>>(), vec![8, 9]);
        assert_eq!(early[0].len(), 8);
        assert!(late[1].is_empty() && early[1].len() == 1);
        assert_eq!((early[2].len(), late[2].len()), (1, 1));
    }
}
