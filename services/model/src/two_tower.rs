//! The two-tower retrieval network: a user tower and an item tower whose
//! L2-normalised outputs are compared by cosine / temperature.
//!
//! Bags (history, genres, title tokens) are mean-pooled over their non-zero
//! entries. The loss (in-batch softmax with logQ correction, mixed and hard
//! negatives) lives in the trainer; this module is the graph only, so the
//! retrieval service runs exactly the same code.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::inputs::{ids, pad_bags};
use crate::{ItemBatch, ModelError, TwoTowerConfig, UserBatch};

/// User and item towers built under one [`nn::Path`].
#[derive(Debug)]
pub struct TwoTower {
    pub config: TwoTowerConfig,
    user_id: nn::Embedding,
    age: nn::Embedding,
    gender: nn::Embedding,
    occupation: nn::Embedding,
    zip: nn::Embedding,
    dow: nn::Embedding,
    hour: nn::Embedding,
    history_item: nn::Embedding,
    user_mlp: nn::Sequential,
    item_id: nn::Embedding,
    genre: nn::Embedding,
    year: nn::Embedding,
    pop: nn::Embedding,
    title: nn::Embedding,
    item_mlp: nn::Sequential,
}

fn emb(p: &nn::Path, name: &str, n: i64, d: i64) -> nn::Embedding {
    let cfg = nn::EmbeddingConfig { ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.05 }, ..Default::default() };
    nn::embedding(p / name, n.max(1), d, cfg)
}

fn tower(p: &nn::Path, input: i64, hidden: i64, out: i64) -> nn::Sequential {
    nn::seq().add(nn::linear(p / "l1", input, hidden, Default::default())).add_fn(|x| x.relu()).add(nn::linear(
        p / "l2",
        hidden,
        out,
        Default::default(),
    ))
}

/// Mean of the embeddings of the non-zero indices of each bag; zero for empty bags.
pub(crate) fn mean_bag(table: &nn::Embedding, bags: &Tensor) -> Tensor {
    let mask = bags.ne(0).to_kind(Kind::Float).unsqueeze(-1);
    let summed = (table.forward(bags) * &mask).sum_dim_intlist(1, false, Kind::Float);
    summed / mask.sum_dim_intlist(1, false, Kind::Float).clamp_min(1.0)
}

fn l2(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2.0, [-1], true).clamp_min(1e-6)
}

impl TwoTower {
    pub fn new(p: &nn::Path, config: TwoTowerConfig) -> Self {
        let c = &config;
        let d = c.embed_dim;
        let u = p / "user";
        let i = p / "item";
        let small = (d / 4).max(4);
        let user_in = d * 3 + small * 6;
        let item_in = d * 3 + small * 2;
        TwoTower {
            user_id: emb(&u, "id", c.n_users, d),
            age: emb(&u, "age", c.n_ages, small),
            gender: emb(&u, "gender", c.n_genders, small),
            occupation: emb(&u, "occupation", c.n_occupations, small),
            zip: emb(&u, "zip", c.n_zips, small),
            dow: emb(&u, "dow", c.n_dows, small),
            hour: emb(&u, "hour", c.n_hours, small),
            history_item: emb(&u, "history_item", c.n_items, d),
            user_mlp: tower(&(&u / "mlp"), user_in, c.hidden_dim, c.out_dim),
            item_id: emb(&i, "id", c.n_items, d),
            genre: emb(&i, "genre", c.n_genres, d),
            year: emb(&i, "year", c.n_years, small),
            pop: emb(&i, "pop", c.n_pop_buckets, small),
            title: emb(&i, "title", c.n_title_buckets, d),
            item_mlp: tower(&(&i / "mlp"), item_in, c.hidden_dim, c.out_dim),
            config,
        }
    }

    /// L2-normalised user embeddings `[B, out_dim]`.
    pub fn encode_users(&self, b: &UserBatch, train: bool) -> Result<Tensor, ModelError> {
        b.check()?;
        let x = Tensor::cat(
            &[
                self.user_id.forward(&ids(&b.user)),
                mean_bag(&self.history_item, &pad_bags(&b.history)),
                mean_bag(&self.history_item, &pad_bags(&b.recent)),
                self.age.forward(&ids(&b.age)),
                self.gender.forward(&ids(&b.gender)),
                self.occupation.forward(&ids(&b.occupation)),
                self.zip.forward(&ids(&b.zip)),
                self.dow.forward(&ids(&b.dow)),
                self.hour.forward(&ids(&b.hour)),
            ],
            1,
        )
        .dropout(self.config.dropout, train);
        Ok(l2(&self.user_mlp.forward(&x)))
    }

    /// L2-normalised item embeddings `[B, out_dim]`.
    pub fn encode_items(&self, b: &ItemBatch, train: bool) -> Result<Tensor, ModelError> {
        b.check()?;
        let x = Tensor::cat(
            &[
                self.item_id.forward(&ids(&b.item)),
                mean_bag(&self.genre, &pad_bags(&b.genres)),
                mean_bag(&self.title, &pad_bags(&b.title)),
                self.year.forward(&ids(&b.year)),
                self.pop.forward(&ids(&b.pop)),
            ],
            1,
        )
        .dropout(self.config.dropout, train);
        Ok(l2(&self.item_mlp.forward(&x)))
    }

    /// Scores `[U, I]` = cosine / temperature.
    pub fn score(&self, users: &Tensor, items: &Tensor) -> Tensor {
        users.matmul(&items.tr()) / self.config.temperature
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, nn::VarStore};

    fn config() -> TwoTowerConfig {
        TwoTowerConfig {
            n_users: 5,
            n_items: 7,
            n_ages: 3,
            n_genders: 3,
            n_occupations: 3,
            n_zips: 3,
            n_genres: 4,
            n_years: 3,
            n_pop_buckets: 3,
            n_title_buckets: 8,
            n_dows: 8,
            n_hours: 25,
            embed_dim: 8,
            hidden_dim: 16,
            out_dim: 8,
            temperature: 0.1,
            dropout: 0.0,
        }
    }

    #[test]
    fn towers_output_unit_vectors_and_round_trip_through_safetensors() {
        let vs = VarStore::new(Device::Cpu);
        let model = TwoTower::new(&vs.root(), config());
        let users = UserBatch {
            user: vec![1, 2],
            age: vec![1, 2],
            gender: vec![1, 1],
            occupation: vec![2, 0],
            zip: vec![1, 0],
            dow: vec![1, 7],
            hour: vec![0, 23],
            history: vec![vec![1, 2, 3], vec![]],
            recent: vec![vec![3], vec![]],
        };
        let items = ItemBatch {
            item: vec![1, 2, 6],
            year: vec![1, 2, 0],
            pop: vec![1, 2, 2],
            genres: vec![vec![1, 2], vec![3], vec![]],
            title: vec![vec![5], vec![1, 7], vec![]],
        };
        let u = model.encode_users(&users, false).unwrap();
        let v = model.encode_items(&items, false).unwrap();
        assert_eq!(u.size(), vec![2, 8]);
        let norms = Vec::<f32>::try_from(v.norm_scalaropt_dim(2.0, [-1], false)).unwrap();
        assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-4), "{norms:?}");
        assert_eq!(model.score(&u, &v).size(), vec![2, 3]);

        let dir = std::env::temp_dir().join(format!("reco-model-tt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tt.safetensors");
        vs.save(&path).unwrap();
        let mut vs2 = VarStore::new(Device::Cpu);
        let model2 = TwoTower::new(&vs2.root(), config());
        vs2.load(&path).unwrap();
        let u2 = model2.encode_users(&users, false).unwrap();
        assert!(u.allclose(&u2, 1e-6, 1e-6, false));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn inconsistent_batch_is_an_error() {
        let vs = VarStore::new(Device::Cpu);
        let model = TwoTower::new(&vs.root(), config());
        let bad = UserBatch { user: vec![1], ..Default::default() };
        assert!(matches!(model.encode_users(&bad, false), Err(ModelError::Batch(_))));
    }
}
