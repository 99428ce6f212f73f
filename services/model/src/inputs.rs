//! Batches of already-indexed features and their conversion to tensors.
//!
//! Variable-length features (history, genres, title tokens) are bags of
//! indices padded with 0 to the longest bag of the batch; towers mean-pool
//! them with a mask.

use tch::Tensor;

use crate::ModelError;

/// Features of a batch of users (one row per query).
#[derive(Debug, Clone, Default)]
pub struct UserBatch {
    pub user: Vec<i64>,
    pub age: Vec<i64>,
    pub gender: Vec<i64>,
    pub occupation: Vec<i64>,
    pub zip: Vec<i64>,
    pub dow: Vec<i64>,
    pub hour: Vec<i64>,
    /// Item indices the user interacted with before the query, oldest first.
    pub history: Vec<Vec<i64>>,
    /// The most recent few of `history` (the "session").
    pub recent: Vec<Vec<i64>>,
}

/// Features of a batch of items.
#[derive(Debug, Clone, Default)]
pub struct ItemBatch {
    pub item: Vec<i64>,
    pub year: Vec<i64>,
    pub pop: Vec<i64>,
    pub genres: Vec<Vec<i64>>,
    pub title: Vec<Vec<i64>>,
}

/// Ranker input for a batch of (user, candidate item) pairs.
#[derive(Debug)]
pub struct RankerBatch {
    /// Two-tower user embeddings `[B, tower_dim]`.
    pub user_emb: Tensor,
    /// Two-tower item embeddings `[B, tower_dim]`.
    pub item_emb: Tensor,
    /// Dense features `[B, n_dense]` (source scores, counts), already scaled.
    pub dense: Tensor,
    pub item: Tensor,
    pub occupation: Tensor,
    pub age: Tensor,
    pub gender: Tensor,
    /// Genre bags `[B, L]`, 0-padded.
    pub genres: Tensor,
}

impl UserBatch {
    pub fn len(&self) -> usize {
        self.user.len()
    }

    pub fn is_empty(&self) -> bool {
        self.user.is_empty()
    }

    pub(crate) fn check(&self) -> Result<(), ModelError> {
        let n = self.user.len();
        let lens = [
            self.age.len(),
            self.gender.len(),
            self.occupation.len(),
            self.zip.len(),
            self.dow.len(),
            self.hour.len(),
            self.history.len(),
            self.recent.len(),
        ];
        if lens.iter().any(|&l| l != n) {
            return Err(ModelError::Batch(format!("user batch columns differ in length: {n} users, {lens:?}")));
        }
        Ok(())
    }
}

impl ItemBatch {
    pub fn len(&self) -> usize {
        self.item.len()
    }

    pub fn is_empty(&self) -> bool {
        self.item.is_empty()
    }

    /// Rows `idx` of this batch (in that order).
    pub fn select(&self, idx: &[usize]) -> ItemBatch {
        ItemBatch {
            item: idx.iter().map(|&i| self.item[i]).collect(),
            year: idx.iter().map(|&i| self.year[i]).collect(),
            pop: idx.iter().map(|&i| self.pop[i]).collect(),
            genres: idx.iter().map(|&i| self.genres[i].clone()).collect(),
            title: idx.iter().map(|&i| self.title[i].clone()).collect(),
        }
    }

    pub(crate) fn check(&self) -> Result<(), ModelError> {
        let n = self.item.len();
        let lens = [self.year.len(), self.pop.len(), self.genres.len(), self.title.len()];
        if lens.iter().any(|&l| l != n) {
            return Err(ModelError::Batch(format!("item batch columns differ in length: {n} items, {lens:?}")));
        }
        Ok(())
    }
}

/// 0-padded `[B, max_len]` index tensor of bags (at least one column).
pub fn pad_bags(bags: &[Vec<i64>]) -> Tensor {
    let width = bags.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut flat = vec![0i64; bags.len() * width];
    for (row, bag) in bags.iter().enumerate() {
        flat[row * width..row * width + bag.len()].copy_from_slice(bag);
    }
    Tensor::from_slice(&flat).view([bags.len() as i64, width as i64])
}

/// 1-D index tensor.
pub(crate) fn ids(v: &[i64]) -> Tensor {
    Tensor::from_slice(v)
}
