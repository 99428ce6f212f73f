//! The user tower behind a batcher: concurrent requests queue, one task gathers them (up to `batch_max`,
//! waiting at most `batch_wait` for more) and runs one forward pass on the blocking pool.
//!
//! tch tensors and modules are `Send` but not `Sync`; the version is shared read-only through
//! [`Artifacts`] (the ranking service does the same with the same `Arc<VersionArtifacts>`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use reco_model::artifacts::VersionArtifacts;
use reco_model::features::{FeatureSpace, Item};
use reco_model::{ItemBatch, UserBatch};
use tch::Tensor;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::query::UserQuery;

/// Requests waiting for the batcher before callers are made to wait for room.
const QUEUE: usize = 4096;

/// Why an embedding could not be computed.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum EncodeError {
    #[error("two-tower model: {0}")]
    Model(String),
    #[error("the user-tower batcher has stopped")]
    Stopped,
}

fn rows(t: &Tensor) -> Result<Vec<Vec<f32>>, EncodeError> {
    let dim = t.size().get(1).copied().unwrap_or(0).max(1) as usize;
    let flat = Vec::<f32>::try_from(t.flatten(0, -1)).map_err(|e| EncodeError::Model(e.to_string()))?;
    Ok(flat.chunks(dim).map(<[f32]>::to_vec).collect())
}

/// User embeddings of `queries`, in order, from one forward pass.
pub fn encode_users(
    artifacts: &VersionArtifacts,
    features: &FeatureSpace,
    queries: &[UserQuery],
) -> Result<Vec<Vec<f32>>, EncodeError> {
    let mut b = UserBatch::default();
    for q in queries {
        features.push_user(&mut b, q.index, &q.user, &q.history, q.now);
    }
    let t =
        tch::no_grad(|| artifacts.two_tower.encode_users(&b, false)).map_err(|e| EncodeError::Model(e.to_string()))?;
    rows(&t)
}

/// Content-only embeddings of items the model has never seen (item index 0, no interactions).
pub fn encode_new_items(
    artifacts: &VersionArtifacts,
    features: &FeatureSpace,
    items: &[Item],
) -> Result<Vec<Vec<f32>>, EncodeError> {
    let mut b = ItemBatch::default();
    for item in items {
        features.push_item(&mut b, 0, item, 0);
    }
    let t =
        tch::no_grad(|| artifacts.two_tower.encode_items(&b, false)).map_err(|e| EncodeError::Model(e.to_string()))?;
    rows(&t)
}

struct Job {
    query: UserQuery,
    reply: oneshot::Sender<Result<Vec<f32>, EncodeError>>,
}

/// Handle to the batcher task; cheap to clone. The task ends when the last handle is dropped.
#[derive(Clone, Debug)]
pub struct UserEncoder {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("query", &self.query).finish_non_exhaustive()
    }
}

impl UserEncoder {
    /// Starts the batcher on the current tokio runtime.
    pub fn spawn(
        artifacts: Arc<VersionArtifacts>,
        features: Arc<FeatureSpace>,
        batch_max: usize,
        batch_wait: Duration,
        metrics: Metrics,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(rx, artifacts, features, batch_max.max(1), batch_wait, metrics));
        UserEncoder { tx }
    }

    /// The embedding of one user, computed in a batch with whoever else is waiting.
    pub async fn encode(&self, query: UserQuery) -> Result<Vec<f32>, EncodeError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Job { query, reply }).await.map_err(|_| EncodeError::Stopped)?;
        rx.await.map_err(|_| EncodeError::Stopped)?
    }
}

async fn run(
    mut rx: mpsc::Receiver<Job>,
    artifacts: Arc<VersionArtifacts>,
    features: Arc<FeatureSpace>,
    batch_max: usize,
    batch_wait: Duration,
    metrics: Metrics,
) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        let deadline = tokio::time::Instant::now() + batch_wait;
        while jobs.len() < batch_max {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(job)) => jobs.push(job),
                    Ok(None) | Err(_) => break,
                },
            }
        }
        metrics.batch(jobs.len());
        let (queries, replies): (Vec<UserQuery>, Vec<_>) = jobs.into_iter().map(|j| (j.query, j.reply)).unzip();
        let (a, f) = (artifacts.clone(), Arc::clone(&features));
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || encode_users(&a, &f, &queries))
            .await
            .unwrap_or_else(|e| Err(EncodeError::Model(format!("forward pass panicked: {e}"))));
        metrics.observe_stage("user_tower_batch", started);
        match result {
            Ok(embeddings) => {
                for (reply, e) in replies.into_iter().zip(embeddings) {
                    let _ = reply.send(Ok(e)); // the caller may have gone away
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "user tower failed");
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
