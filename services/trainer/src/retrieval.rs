//! Two-tower training: causal examples (each train interaction predicted from
//! the user's earlier ones), in-batch softmax with logQ correction, mixed
//! uniform negatives, hard negatives mined from a cross-batch queue, Adam,
//! and early stopping on validation NDCG@10 with the best weights kept.
//!
//! Deterministic given the seed: example order and negative draws come from
//! an RNG seeded by `(seed, epoch)` and libtorch is reseeded each epoch, so a
//! run resumed from an epoch checkpoint replays the same samples (Adam's
//! moments restart from zero on resume).

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use reco_model::{ItemBatch, TwoTower, TwoTowerConfig, UserBatch};
use serde::{Deserialize, Serialize};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::early_stopping::EarlyStopping;
use crate::error::Result;
use crate::eval::{EvalSet, evaluate};
use crate::features::FeatureSpace;
use crate::negatives::{hard_window, log_q, uniform_negatives};
use crate::progress::Progress;
use crate::sources::TwoTowerScorer;
use crate::validate::{Dataset, Interaction};

/// Hyper-parameters of the two-tower model and its training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TwoTowerOptions {
    pub embed_dim: i64,
    pub hidden_dim: i64,
    pub out_dim: i64,
    pub temperature: f64,
    pub dropout: f64,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub batch_size: usize,
    pub max_epochs: usize,
    /// Stop after this many epochs without a better validation NDCG@10.
    pub patience: usize,
    /// Uniform negatives shared by the batch.
    pub uniform_negatives: usize,
    /// Hard negatives per example (0 disables mining).
    pub hard_negatives: usize,
    /// Most similar queue items skipped as likely false negatives.
    pub hard_skip: usize,
    /// Batches of item embeddings kept in the cross-batch queue.
    pub queue_batches: usize,
    /// Epochs before hard negatives are mined (embeddings are random before).
    pub hard_warmup_epochs: usize,
}

impl Default for TwoTowerOptions {
    fn default() -> Self {
        TwoTowerOptions {
            embed_dim: 64,
            hidden_dim: 256,
            out_dim: 64,
            temperature: 0.07,
            dropout: 0.1,
            learning_rate: 2e-3,
            weight_decay: 0.0,
            batch_size: 512,
            max_epochs: 30,
            patience: 3,
            uniform_negatives: 256,
            hard_negatives: 4,
            hard_skip: 5,
            queue_batches: 8,
            hard_warmup_epochs: 1,
        }
    }
}

/// One epoch's log line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub loss: f64,
    pub examples: usize,
    pub seconds: f64,
    pub examples_per_second: f64,
    pub valid_ndcg_at_10: Option<f64>,
}

/// A trained two-tower model with its variables.
#[derive(Debug)]
pub struct TrainedTwoTower {
    pub vs: nn::VarStore,
    pub model: TwoTower,
    pub best_epoch: usize,
    pub best_valid_ndcg_at_10: Option<f64>,
    pub epochs: Vec<EpochLog>,
}

/// What training reads: the data set, train-only features and histories.
pub struct TwoTowerData<'a> {
    pub ds: &'a Dataset,
    pub fs: &'a FeatureSpace,
    /// Train interactions of each user, chronological.
    pub train: &'a [Vec<Interaction>],
    /// Validation set for early stopping (`None`: run `max_epochs`).
    pub valid: Option<&'a EvalSet>,
    /// Weights to start from (a parent version's `two_tower.safetensors`) instead of random ones.
    pub warm_start: Option<&'a Path>,
}

pub fn model_config(fs: &FeatureSpace, ds: &Dataset, options: &TwoTowerOptions) -> TwoTowerConfig {
    TwoTowerConfig {
        n_users: ds.users.len() as i64 + 1,
        n_items: ds.items.len() as i64 + 1,
        n_ages: fs.n_ages(),
        n_genders: fs.genders.size(),
        n_occupations: fs.occupations.size(),
        n_zips: fs.zips.size(),
        n_genres: fs.genres.size(),
        n_years: fs.n_year_buckets,
        n_pop_buckets: fs.n_pop_buckets,
        n_title_buckets: fs.options.title_buckets as i64,
        n_dows: 8,
        n_hours: 25,
        embed_dim: options.embed_dim,
        hidden_dim: options.hidden_dim,
        out_dim: options.out_dim,
        temperature: options.temperature,
        dropout: options.dropout,
    }
}

/// Resume state written after every epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    epoch: usize,
    best_epoch: usize,
    best: Option<f64>,
    epochs: Vec<EpochLog>,
    options: TwoTowerOptions,
    seed: u64,
}

/// Train with the given options; `checkpoint` (a directory) enables resume.
pub fn train_two_tower(
    data: &TwoTowerData<'_>,
    options: &TwoTowerOptions,
    seed: u64,
    checkpoint: Option<&Path>,
    progress: &Progress,
    label: &str,
) -> Result<TrainedTwoTower> {
    let config = model_config(data.fs, data.ds, options);
    tch::manual_seed(seed as i64);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = TwoTower::new(&vs.root(), config.clone());
    if let Some(weights) = data.warm_start {
        crate::checkpoint::warm_start(&mut vs, weights)?;
    }
    let mut best_vs = nn::VarStore::new(Device::Cpu);
    let best_model = TwoTower::new(&best_vs.root(), config);
    best_vs.copy(&vs)?;
    let mut optimizer =
        nn::Adam { wd: options.weight_decay, ..Default::default() }.build(&vs, options.learning_rate)?;

    let mut state =
        CheckpointState { epoch: 0, best_epoch: 0, best: None, epochs: Vec::new(), options: options.clone(), seed };
    if let Some(dir) = checkpoint
        && let Some(saved) = crate::checkpoint::load(dir, &mut vs, &mut best_vs, |s: &CheckpointState| {
            s.options == *options && s.seed == seed
        })?
    {
        tracing::info!(label, epoch = saved.epoch, "resuming two-tower training from checkpoint");
        state = saved;
    }

    let trainer = TwoTowerEpochs::new(data, options, seed, progress, label);
    let mut examples: Vec<(u32, usize)> = Vec::new();
    for (user, history) in data.train.iter().enumerate() {
        examples.extend((0..history.len()).map(|position| (user as u32, position)));
    }
    // The checkpoint has no count of epochs without gain: they are the epochs after the best.
    let bad_epochs = state.epochs.len().saturating_sub(state.best_epoch);
    let mut stopping =
        EarlyStopping { patience: options.patience, best: state.best, best_epoch: state.best_epoch, bad_epochs };
    // Warm-started, the starting weights are epoch 0's candidate: epochs that do not beat the parent's
    // weights on validation are not kept.
    if data.warm_start.is_some() && state.epoch == 0 && data.valid.is_some() {
        let initial = trainer.validate(&model)?;
        tracing::info!(label, valid_ndcg_at_10 = ?initial, "two-tower warm start");
        stopping.observe(0, initial);
        (state.best, state.best_epoch) = (stopping.best, stopping.best_epoch);
    }
    // Without validation nothing can stop it early: it runs `max_epochs`.
    while state.epoch < options.max_epochs && !(data.valid.is_some() && stopping.should_stop()) {
        let epoch = state.epoch + 1;
        let log = trainer.train_epoch(&model, &mut optimizer, &mut examples, epoch)?;
        let valid_ndcg = log.valid_ndcg_at_10;
        state.epochs.push(log);
        state.epoch = epoch;
        if stopping.observe(epoch, valid_ndcg) {
            best_vs.copy(&vs)?;
        }
        (state.best, state.best_epoch) = (stopping.best, stopping.best_epoch);
        if let Some(dir) = checkpoint {
            crate::checkpoint::save(dir, epoch, &state, &vs, &best_vs)?;
        }
    }
    Ok(TrainedTwoTower {
        vs: best_vs,
        model: best_model,
        best_epoch: state.best_epoch,
        best_valid_ndcg_at_10: state.best,
        epochs: state.epochs,
    })
}

/// What every epoch of one run reads, computed once before the first.
struct TwoTowerEpochs<'a> {
    data: &'a TwoTowerData<'a>,
    options: &'a TwoTowerOptions,
    seed: u64,
    progress: &'a Progress,
    label: &'a str,
    items_all: ItemBatch,
    logq: Tensor,
    /// Train items of each user: never mined as their hard negatives.
    known: Vec<HashSet<u32>>,
    n_items: usize,
}

impl<'a> TwoTowerEpochs<'a> {
    fn new(
        data: &'a TwoTowerData<'a>,
        options: &'a TwoTowerOptions,
        seed: u64,
        progress: &'a Progress,
        label: &'a str,
    ) -> Self {
        let items_all = data.fs.item_batch(&data.ds.items);
        let n_items = data.ds.items.len();
        let logq = Tensor::from_slice(&log_q(&data.fs.item_train_count, options.batch_size, options.uniform_negatives));
        let known = data.train.iter().map(|history| history.iter().map(|x| x.item).collect()).collect();
        TwoTowerEpochs { data, options, seed, progress, label, items_all, logq, known, n_items }
    }

    /// One pass over the examples, then the validation score early stopping needs.
    fn train_epoch(
        &self,
        model: &TwoTower,
        optimizer: &mut nn::Optimizer,
        examples: &mut [(u32, usize)],
        epoch: usize,
    ) -> Result<EpochLog> {
        let (options, label) = (self.options, self.label);
        let mut rng = StdRng::seed_from_u64(self.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64));
        tch::manual_seed(self.seed as i64 * 1_000_003 + epoch as i64);
        // From the canonical order, so that the permutation depends on (seed, epoch) only and a resumed
        // run replays the epochs an uninterrupted one would have.
        examples.sort_unstable();
        examples.shuffle(&mut rng);
        let mut queue: VecDeque<(Vec<u32>, Tensor)> = VecDeque::new();
        let bar = self.progress.bar(examples.len() as u64, &format!("{label} epoch {epoch}"));
        let start = Instant::now();
        let mut loss_sum = 0.0;
        let mut batches = 0usize;
        for chunk in examples.chunks(options.batch_size) {
            let mine = options.hard_negatives > 0 && epoch > options.hard_warmup_epochs;
            let step = self.step_loss(model, chunk, &queue, &mut rng, mine)?;
            optimizer.backward_step(&step.loss);
            loss_sum += step.loss.double_value(&[]);
            batches += 1;
            if options.hard_negatives > 0 {
                queue.push_back((step.positives, step.positive_emb));
                if queue.len() > options.queue_batches {
                    queue.pop_front();
                }
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        let seconds = start.elapsed().as_secs_f64();
        let valid_ndcg = self.validate(model)?;
        let log = EpochLog {
            epoch,
            loss: loss_sum / batches.max(1) as f64,
            examples: examples.len(),
            seconds,
            examples_per_second: examples.len() as f64 / seconds.max(1e-9),
            valid_ndcg_at_10: valid_ndcg,
        };
        tracing::info!(label, epoch, loss = log.loss, examples_per_second = log.examples_per_second as u64, seconds = format!("{seconds:.1}"), valid_ndcg_at_10 = ?valid_ndcg, "two-tower epoch");
        Ok(log)
    }

    /// Validation NDCG@10 of `model`, when there is a validation set.
    fn validate(&self, model: &TwoTower) -> Result<Option<f64>> {
        let data = self.data;
        let Some(set) = data.valid else { return Ok(None) };
        let scorer = TwoTowerScorer::new(model, data.fs, data.ds, data.train)?;
        Ok(Some(evaluate(&scorer, set, &[10], &data.fs.item_train_count)?["ndcg@10"]))
    }

    /// The batch's sampled-softmax loss: each example's positive against the
    /// other in-batch positives, the shared uniform negatives and, when
    /// mining, its hard negatives.
    fn step_loss(
        &self,
        model: &TwoTower,
        chunk: &[(u32, usize)],
        queue: &VecDeque<(Vec<u32>, Tensor)>,
        rng: &mut StdRng,
        mine: bool,
    ) -> Result<StepOutput> {
        let (data, options, logq) = (self.data, self.options, &self.logq);
        let batch_len = chunk.len();
        let mut users = UserBatch::default();
        let mut positives = Vec::with_capacity(batch_len);
        for &(user, position) in chunk {
            let history = &data.train[user as usize];
            let now = history[position.saturating_sub(1)].timestamp;
            crate::features::push_user(data.fs, &mut users, data.ds, user, &history[..position], now);
            positives.push(history[position].item);
        }
        let user_emb = model.encode_users(&users, true)?;
        let uniform = uniform_negatives(rng, self.n_items, options.uniform_negatives);
        let hard = if mine && !queue.is_empty() {
            self.mine_hard_negatives(&user_emb, chunk, &positives, queue, rng)?
        } else {
            Vec::new()
        };

        // Encode every distinct item once.
        let mut distinct: Vec<u32> = positives.iter().chain(&uniform).chain(hard.iter().flatten()).copied().collect();
        distinct.sort_unstable();
        distinct.dedup();
        let rows: Vec<usize> = distinct.iter().map(|&i| i as usize).collect();
        let v_all = model.encode_items(&self.items_all.select(&rows), true)?;
        let pos_of = |ids: &[u32]| -> Tensor {
            let idx: Vec<i64> = ids.iter().map(|i| distinct.binary_search(i).map_or(0, |p| p as i64)).collect();
            Tensor::from_slice(&idx)
        };
        let ids_t = |ids: &[u32]| Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>());
        let v_pos = v_all.index_select(0, &pos_of(&positives));
        let v_uni = v_all.index_select(0, &pos_of(&uniform));
        let tau = options.temperature;

        let pos_t = ids_t(&positives);
        let same = pos_t.unsqueeze(1).eq_tensor(&pos_t.unsqueeze(0));
        let not_diag = Tensor::eye(batch_len as i64, (Kind::Bool, Device::Cpu)).logical_not();
        let in_batch = (user_emb.matmul(&v_pos.tr()) / tau - logq.index_select(0, &pos_t).unsqueeze(0))
            .masked_fill(&same.logical_and(&not_diag), -1e9);
        let uni_t = ids_t(&uniform);
        let uni = (user_emb.matmul(&v_uni.tr()) / tau - logq.index_select(0, &uni_t).unsqueeze(0))
            .masked_fill(&pos_t.unsqueeze(1).eq_tensor(&uni_t.unsqueeze(0)), -1e9);
        let mut parts = vec![in_batch, uni];
        if !hard.is_empty() {
            let flat: Vec<u32> = hard.iter().flatten().copied().collect();
            let v_hard =
                v_all.index_select(0, &pos_of(&flat)).view([batch_len as i64, options.hard_negatives as i64, -1]);
            // Mined negatives are not drawn from a known proposal, so they get the
            // same correction as an in-batch draw of that item.
            let hard_logits = (user_emb.unsqueeze(1) * v_hard).sum_dim_intlist(-1, false, Kind::Float) / tau
                - logq.index_select(0, &ids_t(&flat)).view([batch_len as i64, -1]);
            parts.push(hard_logits);
        }
        let logits = Tensor::cat(&parts, 1);
        let target = Tensor::arange(batch_len as i64, (Kind::Int64, Device::Cpu));
        let loss = logits.cross_entropy_for_logits(&target);
        Ok(StepOutput { loss, positives, positive_emb: v_pos.detach() })
    }

    /// Per example, `hard_negatives` items from the queue of recent positives
    /// that the user's embedding scores highest, skipping the `hard_skip` most
    /// similar (likely false negatives) and the user's own items; uniform draws
    /// fill in when the queue has too few.
    fn mine_hard_negatives(
        &self,
        user_emb: &Tensor,
        chunk: &[(u32, usize)],
        positives: &[u32],
        queue: &VecDeque<(Vec<u32>, Tensor)>,
        rng: &mut StdRng,
    ) -> Result<Vec<Vec<u32>>> {
        let options = self.options;
        let queue_ids: Vec<u32> = queue.iter().flat_map(|(ids, _)| ids.iter().copied()).collect();
        let queue_emb = Tensor::cat(&queue.iter().map(|(_, emb)| emb.shallow_clone()).collect::<Vec<_>>(), 0);
        let window = (options.hard_skip + options.hard_negatives) * 4 + 64;
        let top = window.min(queue_ids.len());
        let (_, order) = tch::no_grad(|| user_emb.detach().matmul(&queue_emb.tr()).topk(top as i64, 1, true, true));
        let order = Vec::<i64>::try_from(order.flatten(0, -1))?;
        let mut hard = Vec::with_capacity(chunk.len());
        for (row, &(user, _)) in chunk.iter().enumerate() {
            let ranked: Vec<usize> = order[row * top..(row + 1) * top].iter().map(|&i| i as usize).collect();
            let positive = positives[row];
            let known = &self.known[user as usize];
            let excluded = |id| id == positive || known.contains(&id);
            let mut negatives = hard_window(&ranked, &queue_ids, excluded, options.hard_skip, options.hard_negatives);
            while negatives.len() < options.hard_negatives {
                negatives.push(uniform_negatives(rng, self.n_items, 1)[0]);
            }
            hard.push(negatives);
        }
        Ok(hard)
    }
}

struct StepOutput {
    loss: Tensor,
    positives: Vec<u32>,
    positive_emb: Tensor,
}
