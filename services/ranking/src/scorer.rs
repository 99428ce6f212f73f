//! The scoring core: candidates of one request → ranker batches → task probabilities → value
//! model → served order. Synchronous and free of I/O; the gRPC service runs it on the blocking
//! pool. Features are built exactly as `reco train` built them for `rank_candidates` (see
//! `services/trainer/src/ranking.rs`), with the shared [`reco_model::scoring`] code.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use reco_model::artifacts::VersionArtifacts;
use reco_model::features::FeatureSpace;
use reco_model::scoring::{self, N_DENSE, SourceEvidence, ValueModel};
use reco_model::{RankerBatch, pad_bags};
use reco_proto::{RankRequest, RankedItem};
use tch::{CModule, Kind, Tensor};

use crate::weights::{TaskWeights, ValueWeights, WeightsError};

/// Candidates accepted in one request; the retrieval stage sends a few hundred.
pub const MAX_CANDIDATES: usize = 10_000;

/// How a service scores: rows per forward pass, value-weight overrides and an optional
/// TorchScript ranker replacing the native one; and how it watches its inputs for drift.
#[derive(Debug, Clone)]
pub struct ScorerSettings {
    /// At most this many rows per forward pass (≥ 1).
    pub batch_size: usize,
    /// `--value-weights` overrides of the trained value model.
    pub value_weights: ValueWeights,
    /// A TorchScript ranker (see `docs/ranking.md` for its input contract).
    pub torchscript: Option<PathBuf>,
    pub drift: DriftSettings,
}

impl Default for ScorerSettings {
    fn default() -> Self {
        ScorerSettings {
            batch_size: 256,
            value_weights: ValueWeights::default(),
            torchscript: None,
            drift: DriftSettings::default(),
        }
    }
}

/// How the drift monitors sample live requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriftSettings {
    /// Sampled requests per PSI window; 0 turns the monitors off.
    pub window_requests: usize,
    /// One request in this many is counted (≥ 1).
    pub sample_every: u32,
}

impl Default for DriftSettings {
    fn default() -> Self {
        DriftSettings { window_requests: 1000, sample_every: 4 }
    }
}

/// Why a scorer cannot be built for a version.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("--batch-size must be at least 1")]
    BatchSize,
    #[error("--drift-sample-every must be at least 1")]
    DriftSampling,
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("TorchScript ranker {path}: {source}")]
    TorchScriptLoad { path: PathBuf, source: tch::TchError },
    #[error("TorchScript ranker {path} breaks the input contract: {message}")]
    TorchScriptContract { path: PathBuf, message: String },
    #[error("model version artifacts: {0}")]
    Artifacts(String),
}

/// Why one request cannot be scored.
#[derive(Debug, thiserror::Error)]
pub enum RankError {
    #[error("candidates: {got} exceed the limit of {MAX_CANDIDATES}")]
    TooManyCandidates { got: usize },
    #[error("user_embedding has {got} values, the model version expects {expected}")]
    EmbeddingDimension { got: usize, expected: usize },
    #[error("user_embedding contains a non-finite value at position {0}")]
    EmbeddingNotFinite(usize),
    #[error("ranker forward pass: {0}")]
    Torch(#[from] tch::TchError),
    #[error("ranker output is {got:?}, expected [{rows}, {tasks}]")]
    OutputShape { got: Vec<i64>, rows: usize, tasks: usize },
}

/// Why a candidate was left out of the response (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Skip {
    /// Not in this version's catalogue.
    UnknownItem,
    /// The same item id earlier in the request.
    Duplicate,
    /// A non-finite source score in the request.
    InvalidScore,
    /// The model produced a non-finite probability or value.
    NonFiniteOutput,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::UnknownItem => "unknown_item",
            Skip::Duplicate => "duplicate",
            Skip::InvalidScore => "invalid_score",
            Skip::NonFiniteOutput => "non_finite_output",
        }
    }
}

/// The scored candidates of one request, best first, and what happened on the way.
#[derive(Debug, Default)]
pub struct Ranked {
    pub items: Vec<RankedItem>,
    pub skipped: Vec<Skip>,
    /// Rows of each forward pass.
    pub forwards: Vec<usize>,
    /// The dense features of every scored row, for the drift monitors.
    pub dense: Vec<[f32; N_DENSE]>,
}

/// The ranker that turns a [`RankerBatch`] into logits `[B, n_tasks]`.
enum Network {
    /// `VersionArtifacts::ranker`.
    Native,
    /// A TorchScript module taking the batch tensors in [`RankerBatch`] field order.
    TorchScript(CModule),
}

/// Scores candidates for one model version.
pub struct Scorer {
    artifacts: Arc<VersionArtifacts>,
    network: Network,
    /// Item id → catalogue row.
    rows: HashMap<String, usize>,
    /// Genre bag of each catalogue row (feature-space indices).
    genres: Vec<Vec<i64>>,
    /// Row-major `[n_items, dim]` two-tower item embeddings.
    embeddings: Vec<f32>,
    dim: usize,
    weights: TaskWeights,
    blend: f64,
    batch_size: usize,
}

impl std::fmt::Debug for Scorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scorer")
            .field("dir", &self.artifacts.dir)
            .field("torchscript", &matches!(self.network, Network::TorchScript(_)))
            .field("weights", &self.weights)
            .field("blend", &self.blend)
            .field("batch_size", &self.batch_size)
            .finish()
    }
}

impl Scorer {
    pub fn new(artifacts: Arc<VersionArtifacts>, settings: &ScorerSettings) -> Result<Self, BuildError> {
        if settings.batch_size == 0 {
            return Err(BuildError::BatchSize);
        }
        let rf = &artifacts.ranker_file;
        let weights = TaskWeights::resolve(&rf.model.tasks, &rf.value_model, &settings.value_weights)?;
        let size = artifacts.item_embeddings.size();
        let [n, dim] = size[..] else {
            return Err(BuildError::Artifacts(format!("item embeddings are {size:?}, expected 2-D")));
        };
        if dim != rf.model.tower_dim || n as usize != artifacts.items.len() {
            return Err(BuildError::Artifacts(format!(
                "item embeddings are {size:?}; ranker tower_dim is {} for {} items",
                rf.model.tower_dim,
                artifacts.items.len()
            )));
        }
        let embeddings = Vec::<f32>::try_from(artifacts.item_embeddings.to_kind(Kind::Float).reshape([-1]))
            .map_err(|e| BuildError::Artifacts(format!("item embeddings: {e}")))?;
        let genres = artifacts.features.item_batch(&artifacts.items).genres;
        let rows = artifacts.items.iter().enumerate().map(|(i, item)| (item.id.clone(), i)).collect();
        let mut scorer = Scorer {
            network: Network::Native,
            rows,
            genres,
            embeddings,
            dim: dim as usize,
            weights,
            blend: rf.value_model.ranker_blend,
            batch_size: settings.batch_size,
            artifacts,
        };
        if let Some(path) = &settings.torchscript {
            scorer.network = Network::TorchScript(scorer.load_torchscript(path)?);
        }
        Ok(scorer)
    }

    /// Loads a TorchScript ranker and checks it answers a probe batch with `[B, n_tasks]` logits.
    fn load_torchscript(&self, path: &Path) -> Result<CModule, BuildError> {
        let mut module =
            CModule::load(path).map_err(|source| BuildError::TorchScriptLoad { path: path.into(), source })?;
        module.set_eval();
        let probe = self.batch(&vec![0.0; 2 * self.dim], &[0, 0], &[0.0; 2 * N_DENSE], &Demographics::default());
        let logits = tch::no_grad(|| module.forward_ts(&torchscript_inputs(&probe)))
            .map_err(|e| BuildError::TorchScriptContract { path: path.into(), message: e.to_string() })?;
        let want = [2, self.weights.tasks.len() as i64];
        if logits.size() != want {
            return Err(BuildError::TorchScriptContract {
                path: path.into(),
                message: format!("a 2-row batch gave logits {:?}, expected {want:?}", logits.size()),
            });
        }
        Ok(module)
    }

    /// The model's task names, in output order.
    pub fn tasks(&self) -> &[String] {
        &self.weights.tasks
    }

    /// Scores and orders the candidates of one request.
    pub fn rank(&self, req: &RankRequest) -> Result<Ranked, RankError> {
        let mut out = Ranked::default();
        if req.candidates.is_empty() {
            return Ok(out);
        }
        if req.candidates.len() > MAX_CANDIDATES {
            return Err(RankError::TooManyCandidates { got: req.candidates.len() });
        }
        if req.user_embedding.len() != self.dim {
            return Err(RankError::EmbeddingDimension { got: req.user_embedding.len(), expected: self.dim });
        }
        if let Some(i) = req.user_embedding.iter().position(|x| !x.is_finite()) {
            return Err(RankError::EmbeddingNotFinite(i));
        }
        // (request position, catalogue row) of every candidate that can be scored.
        let mut kept: Vec<(usize, usize)> = Vec::with_capacity(req.candidates.len());
        let mut seen = HashSet::with_capacity(req.candidates.len());
        for (j, c) in req.candidates.iter().enumerate() {
            let Some(&row) = self.rows.get(&c.item_id) else {
                out.skipped.push(Skip::UnknownItem);
                continue;
            };
            if !seen.insert(row) {
                out.skipped.push(Skip::Duplicate);
            } else if !(c.two_tower_score.is_finite() && c.item_to_item_score.is_finite()) {
                out.skipped.push(Skip::InvalidScore);
            } else {
                kept.push((j, row));
            }
        }
        if kept.is_empty() {
            return Ok(out);
        }
        let evidence: Vec<SourceEvidence> = kept
            .iter()
            .map(|&(j, row)| {
                let c = &req.candidates[j];
                SourceEvidence {
                    two_tower_score: c.two_tower_score,
                    item_to_item_score: c.item_to_item_score,
                    train_count: self.artifacts.features.item_train_count.get(row).copied().unwrap_or(0),
                    two_tower_rank: rank(c.two_tower_rank),
                    item_to_item_rank: rank(c.item_to_item_rank),
                    popular_rank: rank(c.popular_rank),
                }
            })
            .collect();
        let history_len = req.user.as_ref().map_or(0, |u| u.history.len());
        out.dense = scoring::dense_features(&evidence, history_len);
        let scaled = self.artifacts.ranker_file.dense_scaler.apply(&out.dense);
        let who = Demographics::of(req);
        let n_tasks = self.weights.tasks.len();
        let mut probs: Vec<f32> = Vec::with_capacity(kept.len() * n_tasks);
        for (b, chunk) in kept.chunks(self.batch_size).enumerate() {
            let start = b * self.batch_size;
            let rows: Vec<usize> = chunk.iter().map(|&(_, row)| row).collect();
            let user = req.user_embedding.repeat(rows.len());
            let batch = self.batch(&user, &rows, &scaled[start * N_DENSE..(start + rows.len()) * N_DENSE], &who);
            let logits = tch::no_grad(|| self.forward(&batch))?;
            if logits.size() != [rows.len() as i64, n_tasks as i64] {
                return Err(RankError::OutputShape { got: logits.size(), rows: rows.len(), tasks: n_tasks });
            }
            probs.extend(Vec::<f32>::try_from(logits.sigmoid().reshape([-1]))?);
            out.forwards.push(rows.len());
        }
        // Candidates whose outputs are not finite are dropped before the z-scores so that one bad
        // row cannot poison the whole list.
        let mut scored: Vec<(usize, usize, &[f32], f32)> = Vec::with_capacity(kept.len());
        for (k, &(j, row)) in kept.iter().enumerate() {
            let p = &probs[k * n_tasks..(k + 1) * n_tasks];
            let value = self.weights.value(p);
            if value.is_finite() && p.iter().all(|x| x.is_finite()) {
                scored.push((j, row, p, value));
            } else {
                out.skipped.push(Skip::NonFiniteOutput);
            }
        }
        let values: Vec<f32> = scored.iter().map(|s| s.3).collect();
        let two_tower: Vec<f32> = scored.iter().map(|s| req.candidates[s.0].two_tower_score).collect();
        let vm = ValueModel {
            high_rating_weight: self.weights.weights.get(1).copied().unwrap_or(0.0),
            ranker_blend: self.blend,
        };
        let served = vm.served_scores(&values, &two_tower);
        let mut order: Vec<usize> = (0..scored.len()).filter(|&k| served[k].is_finite()).collect();
        out.skipped.extend(std::iter::repeat_n(Skip::NonFiniteOutput, scored.len() - order.len()));
        order.sort_by(|&a, &b| served[b].total_cmp(&served[a]).then(scored[a].1.cmp(&scored[b].1)));
        out.items = order
            .into_iter()
            .map(|k| {
                let (j, row, p, _) = scored[k];
                let c = &req.candidates[j];
                RankedItem {
                    item_id: c.item_id.clone(),
                    score: served[k],
                    source: c.source.clone(),
                    category: c.category.clone(),
                    tasks: self.weights.tasks.iter().cloned().zip(p.iter().copied()).collect(),
                    embedding: self.embeddings[row * self.dim..(row + 1) * self.dim].to_vec(),
                    published_at: c.published_at,
                }
            })
            .collect();
        Ok(out)
    }

    fn forward(&self, batch: &RankerBatch) -> Result<Tensor, tch::TchError> {
        match &self.network {
            Network::Native => Ok(self.artifacts.ranker.forward(batch, false).logits),
            Network::TorchScript(module) => module.forward_ts(&torchscript_inputs(batch)),
        }
    }

    /// The ranker batch of `rows` (catalogue rows), as the trainer's `RankerInputs::batch`
    /// builds it: `user` is `rows.len()` copies of the user embedding, `dense` already scaled.
    fn batch(&self, user: &[f32], rows: &[usize], dense: &[f32], who: &Demographics) -> RankerBatch {
        let b = rows.len() as i64;
        let dim = self.dim as i64;
        let item_emb: Vec<f32> =
            rows.iter().flat_map(|&r| self.embeddings[r * self.dim..(r + 1) * self.dim].iter().copied()).collect();
        let fs = &self.artifacts.features;
        let column = |v: i64| Tensor::from_slice(&vec![v; rows.len()]);
        RankerBatch {
            user_emb: Tensor::from_slice(user).view([b, dim]),
            item_emb: Tensor::from_slice(&item_emb).view([b, dim]),
            dense: Tensor::from_slice(dense).view([b, N_DENSE as i64]),
            item: Tensor::from_slice(&rows.iter().map(|&r| self.artifacts.model_index(r)).collect::<Vec<_>>()),
            occupation: column(fs.occupations.index(who.occupation.as_deref())),
            age: column(FeatureSpace::age_bucket(who.age)),
            gender: column(fs.genders.index(who.gender.as_deref())),
            genres: pad_bags(
                &rows.iter().map(|&r| self.genres.get(r).cloned().unwrap_or_default()).collect::<Vec<_>>(),
            ),
        }
    }
}

/// The user's side features the ranker reads; empty strings are "unknown".
#[derive(Debug, Default)]
struct Demographics {
    occupation: Option<String>,
    gender: Option<String>,
    age: Option<u32>,
}

impl Demographics {
    fn of(req: &RankRequest) -> Self {
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        req.user.as_ref().map_or_else(Demographics::default, |u| Demographics {
            occupation: non_empty(&u.occupation),
            gender: non_empty(&u.gender),
            age: u.age,
        })
    }
}

/// A source rank from the wire: negative (`-1`) means the source did not return the item.
fn rank(r: i32) -> Option<usize> {
    usize::try_from(r).ok()
}

/// Names of the TorchScript ranker's inputs, in call order (the [`RankerBatch`] fields).
pub const TORCHSCRIPT_INPUTS: [&str; 8] =
    ["user_emb", "item_emb", "dense", "item", "occupation", "age", "gender", "genres"];

/// The TorchScript input contract: the [`RankerBatch`] tensors in [`TORCHSCRIPT_INPUTS`] order.
pub fn torchscript_inputs(b: &RankerBatch) -> [&Tensor; 8] {
    [&b.user_emb, &b.item_emb, &b.dense, &b.item, &b.occupation, &b.age, &b.gender, &b.genres]
}
