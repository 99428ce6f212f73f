//! Candidate sources as full-ranking scorers: most-popular, item-to-item
//! (EASE, a closed-form item-item model fitted on train) and the two-tower
//! model. Each also provides the per-pair scores the ranker uses as features.

use reco_model::{TwoTower, UserBatch};
use tch::{Device, Kind, Tensor};

use crate::error::Result;
use crate::eval::Scorer;
use crate::features::FeatureSpace;
use crate::validate::{Dataset, Interaction};

fn index_tensor(users: &[u32]) -> Tensor {
    Tensor::from_slice(&users.iter().map(|&u| u as i64).collect::<Vec<_>>())
}

/// Most popular items in train.
#[derive(Debug)]
pub struct Popularity {
    /// `log(1 + count)` per item, `[1, N]`.
    pub scores: Tensor,
}

impl Popularity {
    pub fn new(train_count: &[u32]) -> Self {
        let v: Vec<f32> = train_count.iter().map(|&c| (c as f32 + 1.0).ln()).collect();
        Popularity { scores: Tensor::from_slice(&v).view([1, -1]) }
    }
}

impl Scorer for Popularity {
    fn scores(&self, users: &[u32]) -> Result<Tensor> {
        Ok(self.scores.expand([users.len() as i64, -1], false).contiguous())
    }
}

/// User × item 0/1 matrix `[n_users, n_items]` of the given histories.
pub fn interaction_matrix(histories: &[Vec<Interaction>], n_items: usize) -> Tensor {
    let mut m = vec![0f32; histories.len() * n_items];
    for (u, h) in histories.iter().enumerate() {
        for x in h {
            m[u * n_items + x.item as usize] = 1.0;
        }
    }
    Tensor::from_slice(&m).view([histories.len() as i64, n_items as i64])
}

/// EASE (Steck 2019): `B = I - P diag(1/diag(P))`, `P = (XᵀX + λI)⁻¹`, zero
/// diagonal; a user's scores are their history row times `B`.
#[derive(Debug)]
pub struct ItemItem {
    /// `[N, N]` item-to-item weights.
    pub weights: Tensor,
    pub lambda: f64,
}

impl ItemItem {
    /// Fit on the histories (train only).
    pub fn fit(histories: &[Vec<Interaction>], n_items: usize, lambda: f64) -> Result<Self> {
        let x = interaction_matrix(histories, n_items).to_kind(Kind::Double);
        let n = n_items as i64;
        let g = x.tr().matmul(&x) + Tensor::eye(n, (Kind::Double, Device::Cpu)) * lambda;
        let p = Tensor::f_linalg_inv(&g)?;
        let d = p.diagonal(0, 0, 1);
        let mut b = -(&p / d.unsqueeze(0));
        let _ = b.fill_diagonal_(0.0, false);
        Ok(ItemItem { weights: b.to_kind(Kind::Float), lambda })
    }

    /// A scorer over the given query histories.
    pub fn scorer<'a>(&'a self, histories: &[Vec<Interaction>]) -> ItemItemScorer<'a> {
        ItemItemScorer { model: self, x: interaction_matrix(histories, self.weights.size()[0] as usize) }
    }
}

#[derive(Debug)]
pub struct ItemItemScorer<'a> {
    model: &'a ItemItem,
    pub x: Tensor,
}

impl Scorer for ItemItemScorer<'_> {
    fn scores(&self, users: &[u32]) -> Result<Tensor> {
        Ok(self.x.index_select(0, &index_tensor(users)).matmul(&self.model.weights))
    }
}

/// Embeddings of every user (row = user index) given their known histories;
/// the time context is the user's last known event.
pub fn encode_users(
    model: &TwoTower,
    fs: &FeatureSpace,
    ds: &Dataset,
    histories: &[Vec<Interaction>],
) -> Result<Tensor> {
    let mut parts = Vec::new();
    let users: Vec<u32> = (0..ds.users.len() as u32).collect();
    for chunk in users.chunks(1024) {
        let mut b = UserBatch::default();
        for &u in chunk {
            let h = &histories[u as usize];
            crate::features::push_user(fs, &mut b, ds, u, h, h.last().map_or(0, |x| x.timestamp));
        }
        parts.push(tch::no_grad(|| model.encode_users(&b, false))?);
    }
    Ok(Tensor::cat(&parts, 0))
}

/// Two-tower full-ranking scorer over precomputed embeddings.
#[derive(Debug)]
pub struct TwoTowerScorer {
    pub users: Tensor,
    pub items: Tensor,
}

impl TwoTowerScorer {
    pub fn new(model: &TwoTower, fs: &FeatureSpace, ds: &Dataset, histories: &[Vec<Interaction>]) -> Result<Self> {
        let items = tch::no_grad(|| model.encode_items(&fs.item_batch(&ds.items), false))?;
        Ok(TwoTowerScorer { users: encode_users(model, fs, ds, histories)?, items })
    }
}

impl Scorer for TwoTowerScorer {
    fn scores(&self, users: &[u32]) -> Result<Tensor> {
        Ok(self.users.index_select(0, &index_tensor(users)).matmul(&self.items.tr()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(user: u32, item: u32) -> Interaction {
        Interaction { user, item, rating: 1.0, timestamp: 0 }
    }

    #[test]
    fn ease_recommends_co_occurring_items() {
        // Items 0 and 1 always co-occur; item 2 is alone.
        let hist: Vec<Vec<Interaction>> =
            (0..20).map(|u| if u % 2 == 0 { vec![x(u, 0), x(u, 1)] } else { vec![x(u, 2)] }).collect();
        let m = ItemItem::fit(&hist, 3, 1.0).unwrap();
        let s = m.scorer(&[vec![x(0, 0)]]).scores(&[0]).unwrap();
        let v = Vec::<f32>::try_from(s.flatten(0, -1)).unwrap();
        assert!(v[1] > 0.5 && v[2].abs() < 1e-3, "{v:?}");
    }

    #[test]
    fn popularity_ranks_by_train_count() {
        let p = Popularity::new(&[3, 10, 0]);
        let v = Vec::<f32>::try_from(p.scores(&[0, 1]).unwrap().select(0, 1)).unwrap();
        assert!(v[1] > v[0] && v[0] > v[2]);
    }
}
