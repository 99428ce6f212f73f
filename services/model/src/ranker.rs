//! The ranking network: DCN-v2 (full-rank cross layers) in parallel with a
//! deep MLP, over the two-tower embeddings, their product, dense source
//! scores and the ranker's own sparse features, with one logit per task.
//!
//! The value model that combines the task probabilities into one ranking
//! score is [`RankerOutput::value`]; its weight is tuned by the trainer.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::two_tower::mean_bag;
use crate::{RankerBatch, RankerConfig};

#[derive(Debug)]
pub struct Ranker {
    pub config: RankerConfig,
    item: nn::Embedding,
    genre: nn::Embedding,
    occupation: nn::Embedding,
    age: nn::Embedding,
    gender: nn::Embedding,
    cross: Vec<nn::Linear>,
    deep: nn::Sequential,
    heads: nn::Linear,
}

/// Logits `[B, n_tasks]` in the order of [`RankerConfig::tasks`].
#[derive(Debug)]
pub struct RankerOutput {
    pub logits: Tensor,
}

impl RankerOutput {
    /// Ranking value `p(interaction) * (1 + w * p(high rating))` per row.
    pub fn value(&self, high_rating_weight: f64) -> Tensor {
        let p = self.logits.sigmoid();
        let click = p.select(1, 0);
        if p.size()[1] < 2 {
            return click;
        }
        &click * (p.select(1, 1) * high_rating_weight + 1.0)
    }
}

impl Ranker {
    pub fn new(p: &nn::Path, config: RankerConfig) -> Self {
        let c = &config;
        let d = c.embed_dim;
        let cfg = nn::EmbeddingConfig { ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.05 }, ..Default::default() };
        let input = c.tower_dim * 3 + c.n_dense + d * 5;
        let cross =
            (0..c.cross_layers).map(|l| nn::linear(p / "cross" / l, input, input, Default::default())).collect();
        let deep = nn::seq()
            .add(nn::linear(p / "deep" / "l1", input, c.hidden_dim, Default::default()))
            .add_fn(|x| x.relu())
            .add(nn::linear(p / "deep" / "l2", c.hidden_dim, c.hidden_dim / 2, Default::default()))
            .add_fn(|x| x.relu());
        Ranker {
            item: nn::embedding(p / "item", c.n_items.max(1), d, cfg),
            genre: nn::embedding(p / "genre", c.n_genres.max(1), d, cfg),
            occupation: nn::embedding(p / "occupation", c.n_occupations.max(1), d, cfg),
            age: nn::embedding(p / "age", c.n_ages.max(1), d, cfg),
            gender: nn::embedding(p / "gender", c.n_genders.max(1), d, cfg),
            cross,
            deep,
            heads: nn::linear(p / "heads", input + c.hidden_dim / 2, c.tasks.len() as i64, Default::default()),
            config,
        }
    }

    pub fn forward(&self, b: &RankerBatch, train: bool) -> RankerOutput {
        let x0 = Tensor::cat(
            &[
                b.user_emb.shallow_clone(),
                b.item_emb.shallow_clone(),
                &b.user_emb * &b.item_emb,
                b.dense.to_kind(Kind::Float),
                self.item.forward(&b.item),
                mean_bag(&self.genre, &b.genres),
                self.occupation.forward(&b.occupation),
                self.age.forward(&b.age),
                self.gender.forward(&b.gender),
            ],
            1,
        )
        .dropout(self.config.dropout, train);
        let mut x = x0.shallow_clone();
        for layer in &self.cross {
            x = &x0 * layer.forward(&x) + &x;
        }
        let deep = self.deep.forward(&x0).dropout(self.config.dropout, train);
        RankerOutput { logits: self.heads.forward(&Tensor::cat(&[x, deep], 1)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, nn::VarStore};

    #[test]
    fn ranker_outputs_one_logit_per_task_and_value_is_a_probability() {
        let vs = VarStore::new(Device::Cpu);
        let config = RankerConfig {
            tower_dim: 4,
            n_dense: 3,
            n_items: 10,
            n_genres: 5,
            n_occupations: 3,
            n_ages: 3,
            n_genders: 3,
            embed_dim: 4,
            cross_layers: 2,
            hidden_dim: 16,
            dropout: 0.0,
            tasks: vec!["interaction".into(), "high_rating".into()],
        };
        let r = Ranker::new(&vs.root(), config);
        let b = RankerBatch {
            user_emb: Tensor::randn([3, 4], (Kind::Float, Device::Cpu)),
            item_emb: Tensor::randn([3, 4], (Kind::Float, Device::Cpu)),
            dense: Tensor::randn([3, 3], (Kind::Float, Device::Cpu)),
            item: Tensor::from_slice(&[1i64, 2, 9]),
            occupation: Tensor::from_slice(&[0i64, 1, 2]),
            age: Tensor::from_slice(&[0i64, 1, 2]),
            gender: Tensor::from_slice(&[0i64, 1, 2]),
            genres: crate::pad_bags(&[vec![1, 2], vec![], vec![4]]),
        };
        let out = r.forward(&b, false);
        assert_eq!(out.logits.size(), vec![3, 2]);
        let v = Vec::<f32>::try_from(out.value(1.0)).unwrap();
        assert!(v.iter().all(|x| (0.0..=2.0).contains(x)));
    }
}
