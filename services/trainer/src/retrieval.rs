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
}

pub fn model_config(fs: &FeatureSpace, ds: &Dataset, o: &TwoTowerOptions) -> TwoTowerConfig {
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
        embed_dim: o.embed_dim,
        hidden_dim: o.hidden_dim,
        out_dim: o.out_dim,
        temperature: o.temperature,
        dropout: o.dropout,
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
    o: &TwoTowerOptions,
    seed: u64,
    checkpoint: Option<&Path>,
    progress: &Progress,
    label: &str,
) -> Result<TrainedTwoTower> {
    let config = model_config(data.fs, data.ds, o);
    tch::manual_seed(seed as i64);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = TwoTower::new(&vs.root(), config.clone());
    let mut best_vs = nn::VarStore::new(Device::Cpu);
    let best_model = TwoTower::new(&best_vs.root(), config);
    best_vs.copy(&vs)?;
    let mut opt = nn::Adam { wd: o.weight_decay, ..Default::default() }.build(&vs, o.learning_rate)?;

    let mut state =
        CheckpointState { epoch: 0, best_epoch: 0, best: None, epochs: Vec::new(), options: o.clone(), seed };
    if let Some(dir) = checkpoint
        && let Some(saved) = crate::checkpoint::load(dir, &mut vs, &mut best_vs, |s: &CheckpointState| {
            s.options == *o && s.seed == seed
        })?
    {
        tracing::info!(label, epoch = saved.epoch, "resuming two-tower training from checkpoint");
        state = saved;
    }

    let items_all = data.fs.item_batch(&data.ds.items);
    let n_items = data.ds.items.len();
    let logq = Tensor::from_slice(&log_q(&data.fs.item_train_count, o.batch_size, o.uniform_negatives));
    let mut examples: Vec<(u32, usize)> = Vec::new();
    for (u, h) in data.train.iter().enumerate() {
        examples.extend((0..h.len()).map(|t| (u as u32, t)));
    }
    let known: Vec<HashSet<u32>> = data.train.iter().map(|h| h.iter().map(|x| x.item).collect()).collect();
    let mut bad_epochs = state.epochs.len().saturating_sub(state.best_epoch);

    while state.epoch < o.max_epochs && !(data.valid.is_some() && bad_epochs >= o.patience) {
        let epoch = state.epoch + 1;
        let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64));
        tch::manual_seed(seed as i64 * 1_000_003 + epoch as i64);
        // From the canonical order, so that the permutation depends on (seed, epoch) only and a resumed
        // run replays the epochs an uninterrupted one would have.
        examples.sort_unstable();
        examples.shuffle(&mut rng);
        let mut queue: VecDeque<(Vec<u32>, Tensor)> = VecDeque::new();
        let bar = progress.bar(examples.len() as u64, &format!("{label} epoch {epoch}"));
        let start = Instant::now();
        let mut loss_sum = 0.0;
        let mut batches = 0usize;
        for chunk in examples.chunks(o.batch_size) {
            let mine = o.hard_negatives > 0 && epoch > o.hard_warmup_epochs;
            let loss = step_loss(&model, data, &items_all, &logq, chunk, &queue, &known, &mut rng, o, mine, n_items)?;
            opt.backward_step(&loss.loss);
            loss_sum += loss.loss.double_value(&[]);
            batches += 1;
            if o.hard_negatives > 0 {
                queue.push_back((loss.positives, loss.positive_emb));
                if queue.len() > o.queue_batches {
                    queue.pop_front();
                }
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        let seconds = start.elapsed().as_secs_f64();
        let valid_ndcg = match data.valid {
            Some(set) => {
                let scorer = TwoTowerScorer::new(&model, data.fs, data.ds, data.train)?;
                Some(evaluate(&scorer, set, &[10], &data.fs.item_train_count)?["ndcg@10"])
            }
            None => None,
        };
        let log = EpochLog {
            epoch,
            loss: loss_sum / batches.max(1) as f64,
            examples: examples.len(),
            seconds,
            examples_per_second: examples.len() as f64 / seconds.max(1e-9),
            valid_ndcg_at_10: valid_ndcg,
        };
        tracing::info!(label, epoch, loss = log.loss, examples_per_second = log.examples_per_second as u64, seconds = format!("{seconds:.1}"), valid_ndcg_at_10 = ?valid_ndcg, "two-tower epoch");
        state.epochs.push(log);
        state.epoch = epoch;
        let improved = match (valid_ndcg, state.best) {
            (Some(v), Some(b)) => v > b,
            (Some(_), None) => true,
            (None, _) => true,
        };
        if improved {
            state.best = valid_ndcg;
            state.best_epoch = epoch;
            best_vs.copy(&vs)?;
            bad_epochs = 0;
        } else {
            bad_epochs += 1;
        }
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

struct StepOutput {
    loss: Tensor,
    positives: Vec<u32>,
    positive_emb: Tensor,
}

#[allow(clippy::too_many_arguments)]
fn step_loss(
    model: &TwoTower,
    data: &TwoTowerData<'_>,
    items_all: &ItemBatch,
    logq: &Tensor,
    chunk: &[(u32, usize)],
    queue: &VecDeque<(Vec<u32>, Tensor)>,
    known: &[HashSet<u32>],
    rng: &mut StdRng,
    o: &TwoTowerOptions,
    mine: bool,
    n_items: usize,
) -> Result<StepOutput> {
    let b = chunk.len();
    let mut users = UserBatch::default();
    let mut positives = Vec::with_capacity(b);
    for &(u, t) in chunk {
        let h = &data.train[u as usize];
        let now = h[t.saturating_sub(1)].timestamp;
        crate::features::push_user(data.fs, &mut users, data.ds, u, &h[..t], now);
        positives.push(h[t].item);
    }
    let u = model.encode_users(&users, true)?;
    let uniform = uniform_negatives(rng, n_items, o.uniform_negatives);

    // Hard negatives from the queue, per example.
    let mut hard: Vec<Vec<u32>> = Vec::new();
    if mine && !queue.is_empty() {
        let q_ids: Vec<u32> = queue.iter().flat_map(|(ids, _)| ids.iter().copied()).collect();
        let q_emb = Tensor::cat(&queue.iter().map(|(_, e)| e.shallow_clone()).collect::<Vec<_>>(), 0);
        let window = (o.hard_skip + o.hard_negatives) * 4 + 64;
        let k = window.min(q_ids.len()) as i64;
        let (_, order) = tch::no_grad(|| u.detach().matmul(&q_emb.tr()).topk(k, 1, true, true));
        let order = Vec::<i64>::try_from(order.flatten(0, -1))?;
        for (row, &(user, _)) in chunk.iter().enumerate() {
            let ord: Vec<usize> = order[row * k as usize..(row + 1) * k as usize].iter().map(|&i| i as usize).collect();
            let pos = positives[row];
            let kn = &known[user as usize];
            let mut w = hard_window(&ord, &q_ids, |id| id == pos || kn.contains(&id), o.hard_skip, o.hard_negatives);
            while w.len() < o.hard_negatives {
                w.push(uniform_negatives(rng, n_items, 1)[0]);
            }
            hard.push(w);
        }
    }

    // Encode every distinct item once.
    let mut distinct: Vec<u32> = positives.iter().chain(&uniform).chain(hard.iter().flatten()).copied().collect();
    distinct.sort_unstable();
    distinct.dedup();
    let rows: Vec<usize> = distinct.iter().map(|&i| i as usize).collect();
    let v_all = model.encode_items(&items_all.select(&rows), true)?;
    let pos_of = |ids: &[u32]| -> Tensor {
        let idx: Vec<i64> = ids.iter().map(|i| distinct.binary_search(i).map_or(0, |p| p as i64)).collect();
        Tensor::from_slice(&idx)
    };
    let ids_t = |ids: &[u32]| Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>());
    let v_pos = v_all.index_select(0, &pos_of(&positives));
    let v_uni = v_all.index_select(0, &pos_of(&uniform));
    let tau = o.temperature;

    let pos_t = ids_t(&positives);
    let same = pos_t.unsqueeze(1).eq_tensor(&pos_t.unsqueeze(0));
    let not_diag = Tensor::eye(b as i64, (Kind::Bool, Device::Cpu)).logical_not();
    let in_batch = (u.matmul(&v_pos.tr()) / tau - logq.index_select(0, &pos_t).unsqueeze(0))
        .masked_fill(&same.logical_and(&not_diag), -1e9);
    let uni_t = ids_t(&uniform);
    let uni = (u.matmul(&v_uni.tr()) / tau - logq.index_select(0, &uni_t).unsqueeze(0))
        .masked_fill(&pos_t.unsqueeze(1).eq_tensor(&uni_t.unsqueeze(0)), -1e9);
    let mut parts = vec![in_batch, uni];
    if !hard.is_empty() {
        let flat: Vec<u32> = hard.iter().flatten().copied().collect();
        let v_hard = v_all.index_select(0, &pos_of(&flat)).view([b as i64, o.hard_negatives as i64, -1]);
        // Mined negatives are not drawn from a known proposal, so they get the
        // same correction as an in-batch draw of that item.
        let hard_logits = (u.unsqueeze(1) * v_hard).sum_dim_intlist(-1, false, Kind::Float) / tau
            - logq.index_select(0, &ids_t(&flat)).view([b as i64, -1]);
        parts.push(hard_logits);
    }
    let logits = Tensor::cat(&parts, 1);
    let target = Tensor::arange(b as i64, (Kind::Int64, Device::Cpu));
    let loss = logits.cross_entropy_for_logits(&target);
    Ok(StepOutput { loss, positives, positive_emb: v_pos.detach() })
}
